"""One registry for every pruning method; modules are imported only when their pruner is built.

Each pruner module defines ``PRUNER`` (the class) and ``CONFIG`` (its frozen dataclass config); the
class is built as ``PRUNER(CONFIG(**fields))``; ``keep_ratio`` (the CLI's ``--keep``) overrides the config's.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from typing import Any

from vla_adp.utils.files import read_json

# name -> module under vla_adp.pruning.pruners
PRUNERS: dict[str, str] = {
    "adp": "adp",
    "random": "random",
    "inverse": "inverse",
    "fastv": "fastv",
    "vla_pruner": "vla_pruner",
    "lightvla": "lightvla",
    "vla_cache": "vla_cache",
    "sparsevlm": "sparsevlm",
}


def _module(name: str):
    name = name.replace("-", "_")  # `vla-pruner` and `vla_pruner` name the same method
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; expected one of {sorted(PRUNERS)}")
    return importlib.import_module(f"vla_adp.pruning.pruners.{PRUNERS[name]}")


def config_class(name: str):
    return _module(name).CONFIG


def read_config_file(path: str | Path) -> dict[str, Any]:
    return read_json(path, "pruning config")


def build_pruner(name: str | None, keep_ratio: float | None = None, config_file: str | Path | None = None, **fields):
    """Build a registered pruner from settings, a JSON file (reference field names accepted) and ``keep_ratio``."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings.update(read_config_file(config_file))
    name = name or settings.pop("pruner", None) or "adp"
    settings.pop("pruner", None)
    settings.update(fields)
    mod = _module(name)
    cfg_cls = mod.CONFIG
    cfg = cfg_cls.from_dict(settings) if hasattr(cfg_cls, "from_dict") else cfg_cls(**settings)
    if keep_ratio is not None:
        cfg = dataclasses.replace(cfg, keep_ratio=keep_ratio)
    return mod.PRUNER(cfg)



def build_variant_pruner(model: str, variants: dict[str, str], refused: dict[str, str], name: str | None,
                         keep_ratio: float | None = None, config_file: str | Path | None = None, **fields):
    """A pruner for another model family than OpenVLA-OFT: ``variants`` maps method names to the family's
    own modules (``PRUNER``, ``CONFIG`` with ``from_dict``), ``refused`` maps the methods that cannot run
    on ``model`` to why; every other name goes to :func:`build_pruner` (arguments as there)."""
    settings: dict[str, Any] = dict(read_config_file(config_file)) if config_file is not None else {}
    name = (name or settings.pop("pruner", None) or "adp").replace("-", "_")
    settings.pop("pruner", None)
    if name in refused:
        raise ValueError(f"pruner {name!r} does not run on {model}: {refused[name]}")
    if name not in variants:
        return build_pruner(name, keep_ratio=keep_ratio, **settings, **fields)
    mod = importlib.import_module(variants[name])
    cfg = mod.CONFIG.from_dict({**settings, **fields})
    if keep_ratio is not None:
        cfg = dataclasses.replace(cfg, keep_ratio=keep_ratio)
    return mod.PRUNER(cfg)

def describe_one(name: str) -> tuple[str, list[tuple[str, Any]]]:
    """(summary, [(field, default), ...]) of one registered pruner; imports its module."""
    mod = _module(name)
    doc = (mod.PRUNER.__doc__ or "").strip().splitlines()
    fields = []
    for f in dataclasses.fields(mod.CONFIG):
        if f.default is not dataclasses.MISSING:
            fields.append((f.name, f.default))
        elif f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, f.default_factory()))
        else:
            fields.append((f.name, None))
    return (doc[0] if doc else ""), fields


def describe() -> list[tuple[str, str, list[tuple[str, Any]]]]:
    """(name, summary, [(field, default), ...]) for every registered pruner."""
    return [(name, *describe_one(name)) for name in PRUNERS]
