"""``--checkpoint`` as a Hugging Face Hub repo id (``moojink/openvla-7b-oft-finetuned-libero-spatial``).

A name that is an existing folder is used as it is. Otherwise a name shaped like a Hub repo id
(``owner/name``) is resolved with ``huggingface_hub.snapshot_download``: the files the loader reads
(:mod:`vla_adp.model.checkpoint`: ``*.json``, ``*.safetensors``, ``*.pt``, ``tokenizer.model``) are
fetched into the Hub cache once, and every later call returns the cached snapshot folder
(``<cache>/models--owner--name/snapshots/<commit>/``). The Hub's own settings apply: ``HF_HUB_CACHE``
(or ``HF_HOME``) for the cache, ``HF_HUB_OFFLINE=1`` for cache-only resolution (no network; the
revision is looked up in ``refs/``), ``HF_TOKEN`` for gated repositories. ``revision`` is a branch,
tag or commit (default ``main``).

Needs ``huggingface_hub`` (``pip install 'vla-adp[hub]'``) only when a repo id is given.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# huggingface_hub's repo-id grammar (validate_repo_id): owner/name, each [A-Za-z0-9_.-], no '--' or '..'
REPO_ID = re.compile(r"(?!.*(--|\.\.))[\w.-]{1,96}/[\w.-]{1,96}")
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.pt", "tokenizer.model"]


def is_repo_id(name: str) -> bool:
    return bool(REPO_ID.fullmatch(name)) and not name.startswith((".", "/")) and not name.endswith(".")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as the Hub reads it (any of 1/ON/YES/TRUE), at call time."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def resolve_checkpoint(name: str | Path, revision: str | None = None, cache_dir: str | Path | None = None,
                       local_files_only: bool | None = None) -> Path:
    """A checkpoint folder for ``name``: the folder itself, or a Hub repo's cached snapshot.

    Args:
        name: a local folder, or a Hub repo id ``owner/name``.
        revision: branch, tag or commit of the repo (``None`` = ``main``); refused for a local folder.
        cache_dir: the Hub cache (``None`` = ``HF_HUB_CACHE``, else ``~/.cache/huggingface/hub``).
        local_files_only: only look in the cache (``None`` = ``HF_HUB_OFFLINE``).

    Raises:
        FileNotFoundError: neither a folder nor a repo id, or the repo/revision is not in the cache
            when offline, or the Hub does not know it.
    """
    path = Path(name)
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"--revision {revision!r} applies to a Hub repo id, but {str(name)!r} is a local folder")
        return path
    text = str(name)
    if path.exists() or not is_repo_id(text):
        raise FileNotFoundError(f"checkpoint {text!r} is not a folder, nor a Hub repo id such as "
                                "'moojink/openvla-7b-oft-finetuned-libero-spatial'")
    return _snapshot(text, revision, cache_dir, offline() if local_files_only is None else local_files_only)


def _snapshot(repo_id: str, revision: str | None, cache_dir, local_only: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                            RevisionNotFoundError)
    except ImportError:
        raise FileNotFoundError(f"{repo_id!r} is not a local folder; to load it from the Hugging Face Hub, "
                                "pip install 'vla-adp[hub]' (huggingface_hub)") from None
    where = f"{repo_id!r} (revision {revision or 'main'})"
    cache = cache_dir or os.environ.get("HF_HUB_CACHE")  # read now: the Hub reads it once, at import
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=local_only,
                                   allow_patterns=CHECKPOINT_FILES)
    except LocalEntryNotFoundError:
        mode = "offline (HF_HUB_OFFLINE)" if local_only else "and the Hub could not be reached"
        raise FileNotFoundError(f"{where} is not a local folder, not in the Hub cache {cache or '(default)'}, "
                                f"{mode}; download it once with network access, or give the folder") from None
    except GatedRepoError:
        raise FileNotFoundError(f"{where} is gated: accept its terms on the Hub and set HF_TOKEN") from None
    except RevisionNotFoundError:
        raise FileNotFoundError(f"{where}: the Hub repo has no such revision (a branch, tag or commit)") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{where} is not a local folder nor a Hub repository you can read") from None
    return Path(folder)
