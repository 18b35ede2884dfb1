"""Random dropping (ADP paper §5.3 / Table 1 "random 50 %"; FastV's random-mask variant, pkunlp-icler/FastV).

The paper's random-dropping experiment mirrors ADP's full setup: the action-aware gate still
decides which queries prune (Table 1's 1.29× at 50 % is consistent with gating), only the choice of
tokens inside each camera's quota is uniform at random instead of text-driven. So this entry *is*
:class:`~vla_adp.pruning.pruners.adp.ADPPruner` with ``selection="random"`` and a seed (the
generator is re-seeded by ``reset()``, so every episode draws the same sequence). For random
dropping on every query, set the static schedule: ``{"gate": {"schedule": "static"}}`` (or the
reference's ``"use_dynamic_visual_strategy": false``).
"""

from __future__ import annotations

from dataclasses import dataclass

from vla_adp.pruning.config import ADPConfig
from vla_adp.pruning.pruners.adp import ADPPruner


@dataclass(frozen=True)
class RandomConfig(ADPConfig):
    """ADP's settings with ``selection="random"``; ``seed`` seeds the draw (see :class:`ADPConfig`)."""

    selection: str = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection != "random":
            raise ValueError(f"the 'random' pruner selects at random; got selection={self.selection!r} "
                             "(use the 'adp' pruner for other selections)")


class RandomPruner(ADPPruner):
    """Random dropping: ADP's gate and per-camera quotas, tokens drawn uniformly (seeded)."""

    name = "random"


PRUNER = RandomPruner
CONFIG = RandomConfig
