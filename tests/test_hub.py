"""``--checkpoint`` as a Hub repo id, resolved offline from a cache folder in the Hub's own layout.

No network: the test writes ``models--owner--name/{refs/main, snapshots/<commit>/...}`` (files
stored as symlinks into ``blobs/``, as ``huggingface_hub`` itself stores them) and resolves with
``HF_HUB_OFFLINE=1`` through the real ``huggingface_hub.snapshot_download``.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_obs
from vla_adp.model.hub import is_repo_id, resolve_checkpoint
from vla_adp.model.tiny import make_tiny_checkpoint
from vla_adp.policy import Policy

pytest.importorskip("huggingface_hub", reason="hub extra: pip install huggingface_hub")

REPO = "moojink/openvla-7b-oft-finetuned-libero-spatial"
SRC = Path(__file__).resolve().parents[1] / "src"


def add_snapshot(cache: Path, repo: str, folder: Path, ref: str | None = "main") -> str:
    """Put ``folder``'s files into ``cache`` as the Hub would have downloaded them; returns the commit."""
    commit = hashlib.sha1(f"{repo}:{folder}".encode()).hexdigest()
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in sorted(folder.iterdir()):
        data = f.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    if ref is not None:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_ckpt):
    cache = tmp_path_factory.mktemp("hf_cache")
    main = add_snapshot(cache, REPO, Path(tiny_ckpt))
    other = make_tiny_checkpoint(tmp_path_factory.mktemp("other") / "ckpt", seed=1)
    second = add_snapshot(cache, REPO, Path(other), ref="v2")
    return cache, main, second


@pytest.fixture
def offline(monkeypatch, cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache[0]))
    return cache


def test_repo_id_resolves_to_the_cached_snapshot(offline):
    cache, main, second = offline
    snap = resolve_checkpoint(REPO)
    assert snap == cache / f"models--moojink--openvla-7b-oft-finetuned-libero-spatial/snapshots/{main}"
    assert resolve_checkpoint(REPO, revision="v2").name == second  # a tag/branch in refs/
    assert resolve_checkpoint(REPO, revision=second).name == second  # a commit


def test_policy_from_a_repo_id_equals_the_folder(offline, tiny_ckpt):
    obs = make_obs(4)
    hub = Policy.load(REPO, dtype=torch.float32).infer(obs)["actions"]
    np.testing.assert_array_equal(hub, Policy.load(tiny_ckpt, dtype=torch.float32).infer(obs)["actions"])


def test_offline_misses_are_clear(offline):
    with pytest.raises(FileNotFoundError, match=r"'moojink/nothing-here'.*not in the Hub cache.*offline"):
        resolve_checkpoint("moojink/nothing-here")
    with pytest.raises(FileNotFoundError, match=r"revision v9.*not in the Hub cache"):
        resolve_checkpoint(REPO, revision="v9")
    with pytest.raises(FileNotFoundError, match="nor a Hub repo id"):
        resolve_checkpoint("no/such/folder")


def test_local_folder_wins_and_refuses_a_revision(tiny_ckpt):
    assert resolve_checkpoint(tiny_ckpt) == Path(tiny_ckpt)
    with pytest.raises(ValueError, match="applies to a Hub repo id"):
        resolve_checkpoint(tiny_ckpt, revision="main")
    assert is_repo_id(REPO) and not is_repo_id("/abs/dir") and not is_repo_id("a/b/c") and not is_repo_id("x")


@pytest.mark.slow
def test_cli_predict_takes_a_repo_id_offline(cache, tiny_ckpt, tmp_path):
    """The real command line in a fresh process: the Hub reads HF_HUB_OFFLINE / HF_HUB_CACHE at import."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache[0]),
           "OMP_NUM_THREADS": "1"}
    run = lambda *extra: subprocess.run([sys.executable, "-m", "vla_adp", "predict", "--checkpoint", *extra,  # noqa: E731
                                         "--dtype", "fp32", "--device", "cpu"], env=env, capture_output=True,
                                        text=True, cwd=tmp_path, timeout=300)
    out = run(REPO, "--revision", "v2", "--repeat", "1")
    assert out.returncode == 0, out.stderr
    assert f"snapshots/{cache[2]}" in out.stdout
    missing = run("moojink/openvla-7b-oft-finetuned-libero-goal")
    assert missing.returncode == 2 and "not in the Hub cache" in missing.stderr and "Traceback" not in missing.stderr


def test_hub_layout_copy_without_symlinks(tmp_path, tiny_ckpt, monkeypatch):
    """Caches on file systems without symlinks hold plain files in the snapshot; they resolve too."""
    root = tmp_path / "models--a--b"
    commit = "0" * 40
    shutil.copytree(tiny_ckpt, root / "snapshots" / commit)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    assert resolve_checkpoint("a/b", cache_dir=tmp_path, local_files_only=True) == root / "snapshots" / commit
