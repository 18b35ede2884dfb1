"""Success-rate statistics for closed-loop evaluations (pure functions).

* Wilson score interval for a success rate k/n (Wilson 1927): with z the normal quantile,
  centre = (k + z²/2)/(n + z²), half-width = z·sqrt(k(n−k)/n + z²/4)/(n + z²). Unlike the normal
  approximation it stays inside [0, 1] and is usable at 0 % and 100 %.
* Exact McNemar test for two configurations run on the same initial states: only discordant pairs
  count; with b = "A succeeded, B failed" and c the reverse, under H0 b ~ Binomial(b + c, 1/2);
  two-sided p = min(1, 2·P[X ≤ min(b, c)]).
* Paired bootstrap of the success-rate difference: resample the matched episodes with replacement
  and take percentiles of SR_A − SR_B.

The report (:mod:`vla_adp.report.runs`) and the pictures (:mod:`vla_adp.viz`) both use
:func:`wilson` / :class:`Rate`. Peers report LIBERO success rates without seeds or error bars; with 500 episodes per suite the 95 %
Wilson interval around 95 % is about ±2 points, so differences of a point need the paired tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class Rate:
    """k successes of n with a confidence interval."""

    k: int
    n: int
    lo: float
    hi: float

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k/n; (0, 1) when n = 0."""
    if not (isinstance(k, (int, np.integer)) and isinstance(n, (int, np.integer)) and 0 <= k <= n):
        raise ValueError(f"need integers 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    z2 = z * z
    centre = (k + z2 / 2) / (n + z2)
    half = z * math.sqrt(k * (n - k) / n + z2 / 4) / (n + z2)
    return max(0.0, centre - half), min(1.0, centre + half)


def success_rate(successes: Iterable[bool], confidence: float = 0.95) -> Rate:
    s = [bool(x) for x in successes]
    k, n = sum(s), len(s)
    return Rate(k, n, *wilson(k, n, confidence))


@dataclass(frozen=True)
class McNemar:
    """Discordant counts and the exact two-sided p-value."""

    a_only: int  # A succeeded, B failed
    b_only: int  # B succeeded, A failed
    p_value: float


def _check_paired(a: Sequence[bool], b: Sequence[bool]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Exact McNemar test of paired outcomes ``a[i]``, ``b[i]`` (same initial state i)."""
    _check_paired(a, b)
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    n = a_only + b_only
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(math.comb(n, i) for i in range(min(a_only, b_only) + 1)) / 2 ** n
    return McNemar(a_only, b_only, min(1.0, 2 * tail))


@dataclass(frozen=True)
class Difference:
    """SR_A − SR_B over paired episodes with a bootstrap percentile interval."""

    diff: float
    lo: float
    hi: float
    n: int


def paired_bootstrap(a: Sequence[bool], b: Sequence[bool], n_boot: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> Difference:
    """Percentile interval of the success-rate difference, resampling episode pairs."""
    _check_paired(a, b)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}")
    _z(confidence)
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size == 0:
        return Difference(float("nan"), float("nan"), float("nan"), 0)
    idx = np.random.default_rng(seed).integers(0, d.size, (n_boot, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return Difference(float(d.mean()), float(lo), float(hi), int(d.size))


def pair_outcomes(a: dict[tuple, bool], b: dict[tuple, bool]) -> tuple[list[tuple], list[bool], list[bool]]:
    """Outcomes keyed by (suite, task, episode), matched on the keys both have, in sorted order."""
    keys = sorted(set(a) & set(b))
    return keys, [a[k] for k in keys], [b[k] for k in keys]
