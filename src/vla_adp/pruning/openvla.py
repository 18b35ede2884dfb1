"""Pruners for the OpenVLA family: the registry's, with VLA-Pruner's OpenVLA variant under its own name.

``build_openvla_pruner("vla_pruner", ...)`` builds :mod:`vla_adp.pruning.pruners.vla_pruner_openvla`
(action scores from the decode steps, as the fork's ``src/openvla``); every other name goes to
:func:`vla_adp.pruning.registry.build_pruner` unchanged (ADP, FastV, random, inverse work on OpenVLA's
prefill as they are). LightVLA is refused: it is a trained method and no OpenVLA weights for it exist.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from vla_adp.pruning.registry import build_pruner, read_config_file

FAMILY_VARIANTS = {"vla_pruner": "vla_adp.pruning.pruners.vla_pruner_openvla"}
NOT_ON_OPENVLA = {"lightvla": "LightVLA trains its selection with the policy; no OpenVLA weights for it exist"}


def build_openvla_pruner(name: str | None, keep_ratio: float | None = None, config_file: str | Path | None = None,
                         **fields):
    """A pruner for :class:`~vla_adp.openvla_policy.OpenVLAPolicy` (arguments as ``build_pruner``)."""
    import importlib

    settings: dict[str, Any] = dict(read_config_file(config_file)) if config_file is not None else {}
    name = (name or settings.pop("pruner", None) or "adp").replace("-", "_")
    settings.pop("pruner", None)
    if name in NOT_ON_OPENVLA:
        raise ValueError(f"pruner {name!r} does not run on OpenVLA: {NOT_ON_OPENVLA[name]}")
    if name not in FAMILY_VARIANTS:
        return build_pruner(name, keep_ratio=keep_ratio, **settings, **fields)
    mod = importlib.import_module(FAMILY_VARIANTS[name])
    cfg = mod.CONFIG.from_dict({**settings, **fields})
    if keep_ratio is not None:
        cfg = dataclasses.replace(cfg, keep_ratio=keep_ratio)
    return mod.PRUNER(cfg)
