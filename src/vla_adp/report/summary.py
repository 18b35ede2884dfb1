"""What a method was and how well it did, from logs only (inputs of the plots and tables).

* A *method* is what one legend entry or table column stands for. The evaluation runner hashes
  every run config (suite and checkpoint included) into ``config_hash`` and the suite-independent
  part into ``method_hash`` (its ``run`` record); configs that share a method hash are one method.
  Without a run record a config hash is its own method.
* Traits of a method (pruner, keep ratio ρ, selection) come from the run record's ``config`` when
  present (nested anywhere: ``{"method": {"pruner": {"name": "adp", "config": {"keep_ratio": ...}}}}``,
  or the reference's ``qk_keep_ratio``), else from its query records (pruner name; ρ as the kept
  share of visual tokens in pruned queries).
* Success rates carry a Wilson score interval (:func:`vla_adp.eval.stats.wilson`, as the report's).
* Expected FLOPs are the mean FLOPs per query over all queries, pruned or not: the paper's "Expected
  FLOPs" (Tables 5–9, γ·F_pruned + (1−γ)·F_full with γ the pruned share), measured. Speedup =
  mean unpruned FLOPs of the same queries (``flops_full``, where the log has it) or of the unpruned
  baseline method / expected FLOPs. Both come from the episode records through
  :func:`vla_adp.report.runs.cost`, as the report's columns do.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_adp.eval.logs import RunLog
from vla_adp.report.runs import cost
from vla_adp.eval.schema import EpisodeRecord, QueryRecord
from vla_adp.eval.stats import Rate, success_rate

KEEP_KEYS = ("keep_ratio", "qk_keep_ratio", "keep")
SELECTION_KEYS = ("selection",)
LAYER_KEYS = ("layer", "qk_layer")
SCHEDULE_KEYS = ("schedule",)


# -- methods -----------------------------------------------------------------------------------
def methods(log: RunLog) -> dict[str, set[str]]:
    """Method id (``method_hash``, else the config hash) -> its config hashes."""
    out: dict[str, set[str]] = defaultdict(set)
    for h in log.config_hashes:
        out[log.method_of(h)].add(h)
    return dict(out)


def _items(data: Any):
    """(key, value) pairs of nested dicts, breadth-first (shallow settings win over deep ones)."""
    level = [data]
    while level:
        nxt = []
        for d in level:
            if isinstance(d, dict):
                yield from d.items()
                nxt.extend(v for v in d.values() if isinstance(v, dict))
        level = nxt


def _find(data: Any, keys: tuple[str, ...]) -> Any:
    return next((v for k, v in _items(data) if k in keys and not isinstance(v, dict)), None)


def _pruner_name(config: dict) -> str | None:
    """``"pruner": "adp"`` or ``"pruner": {"name": "adp", ...}`` anywhere in the config."""
    for k, v in _items(config):
        if k == "pruner" and isinstance(v, dict):
            v = v.get("name")
        if k == "pruner" and isinstance(v, str):
            return v
    return None


@dataclass(frozen=True)
class Traits:
    """What distinguishes one method in a plot legend or a table column."""

    method: str
    pruner: str | None
    keep_ratio: float | None
    selection: str | None
    layer: int | None = None  # the scoring / cut layer, shown when not 0
    schedule: str | None = None  # the gate's schedule, shown when "static"

    @property
    def label(self) -> str:
        if self.pruner is None:
            return "unpruned"
        parts = [self.pruner]
        if self.selection and self.selection not in ("top", self.pruner):  # "random", not "random random"
            parts.append(self.selection)
        if self.schedule == "static":
            parts.append("static")
        if self.layer:
            parts.append(f"L{self.layer}")
        if self.keep_ratio is not None:
            parts.append(f"ρ={self.keep_ratio:g}")
        return " ".join(parts)


def traits(log: RunLog, method: str) -> Traits:
    members = methods(log).get(method, {method})
    config = next((log.run(h).config or {} for h in sorted(members) if log.run(h) is not None), {})
    queries = method_queries(log, method)
    pruner = _pruner_name(config) or next((q.pruner for q in queries if q.pruner), None)
    keep = _find(config, KEEP_KEYS)
    if keep is None:
        shares = [q.kept_visual / q.n_visual for q in queries if q.pruned and q.n_visual]
        keep = round(float(np.mean(shares)), 2) if shares else None
    selection, layer, schedule = (_find(config, keys) for keys in (SELECTION_KEYS, LAYER_KEYS, SCHEDULE_KEYS))
    return Traits(method, pruner, None if pruner is None or keep is None else float(keep), selection,
                  layer if isinstance(layer, int) else None, schedule if isinstance(schedule, str) else None)


def resolve_method(log: RunLog, name: str) -> str:
    """A method id from a method-hash or config-hash prefix or a label (``"adp ρ=0.5"``, ``"unpruned"``)."""
    ms = methods(log)
    hits = {m for m, hs in ms.items() if m.startswith(name) or any(h.startswith(name) for h in hs)}
    hits = hits or {m for m in ms if traits(log, m).label == name}
    if len(hits) != 1:
        known = ", ".join(f"{m[:10]} ({traits(log, m).label})" for m in sorted(ms))
        what = "matches no" if not hits else f"matches {len(hits)}"
        raise ValueError(f"config {name!r} {what} method in the logs; known: {known}")
    return hits.pop()


# -- numbers -----------------------------------------------------------------------------------
def method_queries(log: RunLog, method: str) -> list[QueryRecord]:
    members = methods(log).get(method, {method})
    return [q for k, qs in log.queries.items() if k[0] in members for q in qs]


def success_rates(log: RunLog, method: str, by: str | tuple[str, ...] | None = None) -> dict[Any, Rate]:
    """Success per value of episode field(s) ``by`` (``"suite"``, ``("suite", "task_id")``;
    ``None`` = one rate over all episodes, under the key ``None``)."""
    members = methods(log).get(method, {method})
    outcomes: dict[Any, list[bool]] = defaultdict(list)
    for key, e in log.episodes.items():
        if key[0] in members:
            group = None if by is None else getattr(e, by) if isinstance(by, str) else tuple(getattr(e, b) for b in by)
            outcomes[group].append(bool(e.success))
    return {k: success_rate(v) for k, v in outcomes.items()}


def method_episodes(log: RunLog, method: str) -> list[EpisodeRecord]:
    members = methods(log).get(method, {method})
    return [e for k, e in log.episodes.items() if k[0] in members]


def expected_flops(log: RunLog, method: str) -> float:
    """Mean FLOPs per query of a method's finished episodes (nan without queries)."""
    return cost(method_episodes(log, method))["flops"]


def full_flops(log: RunLog, method: str) -> float:
    """Mean unpruned FLOPs of the same queries (``flops_full``); nan unless every episode logged it."""
    return cost(method_episodes(log, method))["flops_full"]


def pruned_share(log: RunLog, method: str) -> float:
    """γ: share of queries that ran pruned."""
    return cost(method_episodes(log, method))["gamma"]


def baseline_method(log: RunLog) -> str | None:
    """The one method without a pruner, if the logs hold exactly one."""
    plain = [m for m in methods(log) if traits(log, m).pruner is None]
    return plain[0] if len(plain) == 1 else None
