"""What a run configuration was and how well it did, from logs only (inputs of plots and tables).

* Traits of a configuration (pruner, keep ratio ρ, selection) come from its ``run`` record's
  ``config`` when present (our names or the reference's ``qk_keep_ratio``), else from its query
  records (pruner name; ρ as the kept share of visual tokens in pruned queries).
* Success rates carry a Wilson score interval (Wilson 1927), which stays inside [0, 1] and is
  sensible at 0 % and 100 %, unlike the normal approximation.
* Expected FLOPs are the mean LLM FLOPs per query over all queries, pruned or not: the paper's
  "Expected FLOPs" (Tables 5–9, γ·F_pruned + (1−γ)·F_full with γ the pruned share) measured
  instead of assumed. Speedup = expected FLOPs of the unpruned baseline / expected FLOPs.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from vla_adp.viz.logs import RunLog

KEEP_KEYS = ("keep_ratio", "qk_keep_ratio", "keep")
PRUNER_KEYS = ("pruner", "pruner_name", "method")
SELECTION_KEYS = ("selection",)
Z95 = statistics.NormalDist().inv_cdf(0.975)  # 1.95996...


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (nan, nan) for n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..n={n}, got {successes}")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Traits:
    """What distinguishes one configuration in a plot legend or a table column."""

    config_hash: str
    pruner: str | None
    keep_ratio: float | None
    selection: str | None

    @property
    def label(self) -> str:
        if self.pruner is None:
            return "unpruned"
        parts = [self.pruner]
        if self.selection and self.selection != "top":
            parts.append(self.selection)
        if self.keep_ratio is not None:
            parts.append(f"ρ={self.keep_ratio:g}")
        return " ".join(parts)


def _find(data: Any, keys: tuple[str, ...]) -> Any:
    """First value under any of ``keys`` in nested dicts (breadth-first)."""
    level = [data]
    while level:
        nxt = []
        for d in level:
            if isinstance(d, dict):
                for k in keys:
                    if k in d and not isinstance(d[k], dict):
                        return d[k]
                nxt.extend(v for v in d.values() if isinstance(v, dict))
        level = nxt
    return None


def traits(log: RunLog, config_hash: str) -> Traits:
    config = log.runs.get(config_hash, {}).get("config", {})
    queries = [q for k, qs in log.queries.items() if k[0] == config_hash for q in qs]
    pruner = _find(config, PRUNER_KEYS) if config else None
    if pruner is None:
        pruner = next((q.pruner for q in queries if q.pruner), None)
    keep = _find(config, KEEP_KEYS) if config else None
    if keep is None:
        shares = [q.kept_visual / q.n_visual for q in queries if q.pruned and q.n_visual]
        keep = round(float(np.mean(shares)), 2) if shares else None
    selection = _find(config, SELECTION_KEYS) if config else None
    return Traits(config_hash, pruner, None if pruner is None or keep is None else float(keep), selection)


def resolve_config(log: RunLog, name: str) -> str:
    """A config hash from a hash prefix or a label (``"adp ρ=0.5"``, ``"unpruned"``)."""
    hashes = log.config_hashes
    hits = [h for h in hashes if h.startswith(name)] or [h for h in hashes if traits(log, h).label == name]
    if len(hits) != 1:
        known = ", ".join(f"{h[:10]} ({traits(log, h).label})" for h in hashes)
        what = "matches no" if not hits else f"matches {len(hits)}"
        raise ValueError(f"config {name!r} {what} configuration in the logs; known: {known}")
    return hits[0]


@dataclass(frozen=True)
class Rate:
    """Successes of n episodes with a 95 % Wilson interval."""

    successes: int
    n: int

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.n)


def success_rates(log: RunLog, config_hash: str, by: str | tuple[str, ...] | None = None) -> dict[Any, Rate]:
    """Success per value of episode field(s) ``by`` (``"suite"``, ``("suite", "task_id")``;
    ``None`` = one rate over all episodes, under the key ``None``)."""
    counts: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for key, e in log.episodes.items():
        if key[0] != config_hash:
            continue
        group = None if by is None else getattr(e, by) if isinstance(by, str) else tuple(getattr(e, b) for b in by)
        c = counts[group]
        c[0] += int(bool(e.success))
        c[1] += 1
    return {k: Rate(s, n) for k, (s, n) in counts.items()}


def expected_flops(log: RunLog, config_hash: str) -> float:
    """Mean LLM FLOPs per query of a configuration (nan without query records)."""
    flops = [q.flops for k, qs in log.queries.items() if k[0] == config_hash for q in qs]
    return float(np.mean(flops)) if flops else math.nan


def pruned_share(log: RunLog, config_hash: str) -> float:
    """γ: share of queries that ran pruned."""
    flags = [q.pruned for k, qs in log.queries.items() if k[0] == config_hash for q in qs]
    return float(np.mean(flags)) if flags else math.nan


def baseline_hash(log: RunLog) -> str | None:
    """The one configuration without a pruner, if the logs hold exactly one."""
    plain = [h for h in log.config_hashes if traits(log, h).pruner is None]
    return plain[0] if len(plain) == 1 else None
