"""Visual-token pruning: layout, keep sets, scoring, selection, the action-aware gate, pruners."""

from vla_adp.pruning.base import LayerContext, Pruner, Query, QueryOutcome
from vla_adp.pruning.keep import Keep, apply_keep
from vla_adp.pruning.layout import TokenLayout

__all__ = ["Keep", "LayerContext", "Pruner", "Query", "QueryOutcome", "TokenLayout", "apply_keep"]
