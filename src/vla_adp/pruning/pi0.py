"""Pruners for the π0 / π0.5 family: the registry's, with VLA-Pruner's π0 variant under its own name.

``build_pi0_pruner("vla_pruner", ...)`` builds :mod:`vla_adp.pruning.pruners.vla_pruner_pi0` (action
scores from the action expert's attention during denoising); ADP, FastV, random and inverse go to
:func:`vla_adp.pruning.registry.build_pruner` unchanged (they cut the VLM prefix as they cut OFT's
sequence). The methods that need what π0 does not have are refused with the reason.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from vla_adp.pruning.registry import build_pruner, read_config_file

FAMILY_VARIANTS = {"vla_pruner": "vla_adp.pruning.pruners.vla_pruner_pi0"}
NOT_ON_PI0 = {
    "lightvla": "LightVLA trains its selection with the policy; no π0 weights for it exist",
    "vla_cache": "VLA-Cache reuses the previous query's keys/values through the Llama decoder's attention taps, "
                 "which π0's prefix does not offer",
}


def build_pi0_pruner(name: str | None, keep_ratio: float | None = None, config_file: str | Path | None = None,
                     **fields):
    """A pruner for :class:`~vla_adp.pi0_policy.Pi0Policy` (arguments as ``build_pruner``)."""
    settings: dict[str, Any] = dict(read_config_file(config_file)) if config_file is not None else {}
    name = (name or settings.pop("pruner", None) or "adp").replace("-", "_")
    settings.pop("pruner", None)
    if name in NOT_ON_PI0:
        raise ValueError(f"pruner {name!r} does not run on π0 / π0.5: {NOT_ON_PI0[name]}")
    if name not in FAMILY_VARIANTS:
        return build_pruner(name, keep_ratio=keep_ratio, **settings, **fields)
    mod = importlib.import_module(FAMILY_VARIANTS[name])
    cfg = mod.CONFIG.from_dict({**settings, **fields})
    if keep_ratio is not None:
        cfg = dataclasses.replace(cfg, keep_ratio=keep_ratio)
    return mod.PRUNER(cfg)
