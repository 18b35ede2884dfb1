"""Inverse selection (ADP paper Table 4, the "inversion" ablation).

Keeps the *least* relevant tokens by ADP's text-driven score, inside ADP's full setup (the
action-aware gate stays on, per-camera quotas as ADP's). So this entry *is*
:class:`~vla_adp.pruning.pruners.adp.ADPPruner` with ``selection="inverse"``. For inversion on
every query, set the static schedule: ``{"gate": {"schedule": "static"}}``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vla_adp.pruning.config import ADPConfig
from vla_adp.pruning.pruners.adp import ADPPruner


@dataclass(frozen=True)
class InverseConfig(ADPConfig):
    """ADP's settings with ``selection="inverse"`` (see :class:`ADPConfig`)."""

    selection: str = "inverse"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.selection != "inverse":
            raise ValueError(f"the 'inverse' pruner keeps the least relevant tokens; got selection={self.selection!r} "
                             "(use the 'adp' pruner for other selections)")


class InversePruner(ADPPruner):
    """Inverse selection: ADP with the lowest-scoring tokens kept per camera (gate on)."""

    name = "inverse"


PRUNER = InversePruner
CONFIG = InverseConfig
