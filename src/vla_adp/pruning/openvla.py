"""Pruners for the OpenVLA family: the registry's, with VLA-Pruner's OpenVLA variant under its own name.

``build_openvla_pruner("vla_pruner", ...)`` builds :mod:`vla_adp.pruning.pruners.vla_pruner_openvla`
(action scores from the decode steps, as the fork's ``src/openvla``); every other name goes to
:func:`vla_adp.pruning.registry.build_pruner` unchanged (ADP, FastV, random, inverse work on OpenVLA's
prefill as they are). LightVLA is refused: it is a trained method and no OpenVLA weights for it exist.
"""

from __future__ import annotations

from pathlib import Path

from vla_adp.pruning.registry import build_variant_pruner

FAMILY_VARIANTS = {"vla_pruner": "vla_adp.pruning.pruners.vla_pruner_openvla"}
NOT_ON_OPENVLA = {"lightvla": "LightVLA trains its selection with the policy; no OpenVLA weights for it exist"}


def build_openvla_pruner(name: str | None, keep_ratio: float | None = None, config_file: str | Path | None = None,
                         **fields):
    """A pruner for :class:`~vla_adp.openvla_policy.OpenVLAPolicy` (arguments as ``build_pruner``)."""
    return build_variant_pruner("OpenVLA", FAMILY_VARIANTS, NOT_ON_OPENVLA, name, keep_ratio=keep_ratio,
                                config_file=config_file, **fields)
