"""Pruners for the π0 / π0.5 family: the registry's, with VLA-Pruner's π0 variant under its own name.

``build_pi0_pruner("vla_pruner", ...)`` builds :mod:`vla_adp.pruning.pruners.vla_pruner_pi0` (action
scores from the action expert's attention during denoising); ADP, FastV, random and inverse go to
:func:`vla_adp.pruning.registry.build_pruner` unchanged (they cut the VLM prefix as they cut OFT's
sequence). The methods that need what π0 does not have are refused with the reason.
"""

from __future__ import annotations

from pathlib import Path

from vla_adp.pruning.registry import build_variant_pruner

FAMILY_VARIANTS = {"vla_pruner": "vla_adp.pruning.pruners.vla_pruner_pi0"}
NOT_ON_PI0 = {
    "lightvla": "LightVLA trains its selection with the policy; no π0 weights for it exist",
    "vla_cache": "VLA-Cache reuses the previous query's keys/values through the Llama decoder's attention taps, "
                 "which π0's prefix does not offer",
}


def build_pi0_pruner(name: str | None, keep_ratio: float | None = None, config_file: str | Path | None = None,
                     **fields):
    """A pruner for :class:`~vla_adp.pi0_policy.Pi0Policy` (arguments as ``build_pruner``)."""
    return build_variant_pruner("π0 / π0.5", FAMILY_VARIANTS, NOT_ON_PI0, name, keep_ratio=keep_ratio,
                                config_file=config_file, **fields)
