"""How many visual tokens stay (seed paper Eq. 10–11; chen7086/VLA-ADP ``predict_action``).

    k   = r(ρ · L_vis)                                  r ∈ {round (reference code), ceil (paper tables), floor (Eq. 10)}
    k_c = quota of view c from the weights α (qk_keep_split), remainder fixed one token at a time

``round`` is Python's banker's rounding, as the reference uses it (0.35·512 = 179.2 → 179). Where a
view's quota exceeds its size the reference silently loses the excess; here it moves to the other
views so that exactly k tokens are kept (the only deviation; it never triggers at LIBERO's splits).

Pure arithmetic on counts, shared by the pruners and by a family's own selectors (π0's prefix).
"""

from __future__ import annotations

import math

ROUNDINGS = ("round", "ceil", "floor")
BUDGETS = ("global", "per_view")  # one top-k over all cameras, or round(ρ·n_c) per camera
SELECTIONS = ("top", "inverse", "random")  # which tokens of a budget stay: highest, lowest or random scores


def keep_count(n: int, keep_ratio: float, rounding: str = "round") -> int:
    """Visual tokens kept of ``n`` at keep ratio ρ: max(1, r(ρ·n)), never more than n."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {keep_ratio!r}")
    x = n * keep_ratio
    # Guard ceil/floor against float noise (0.3·512 = 153.60000000000002).
    k = {"round": round(x), "ceil": math.ceil(round(x, 9)), "floor": math.floor(round(x, 9))}[rounding]
    return min(n, max(1, int(k)))


def view_weights(weights: tuple[float, ...] | None, n_views: int) -> list[float]:
    """Reference rule: equal if absent or the wrong length; a 2-element (main, wrist) split with more
    than two views becomes [main, wrist/(N-1), ...]; negative weights count as 0; normalised."""
    if weights is not None and len(weights) == 2 and n_views > 2:
        weights = (weights[0], *([weights[1] / (n_views - 1)] * (n_views - 1)))
    if weights is None or len(weights) != n_views:
        weights = (1.0,) * n_views
    w = [max(0.0, float(x)) for x in weights]
    total = sum(w)
    return [x / total for x in w] if total > 0 else [1.0 / n_views] * n_views


def view_quotas(k: int, views: tuple[int, ...], weights: tuple[float, ...] | None = None) -> tuple[int, ...]:
    """Per-view budgets summing to exactly ``k``.

    quota_c = max(1, round(k·α_c)); the rounding remainder is fixed one token at a time, round-robin
    over views in descending weight, never below 1 (reference); overflow beyond a view's size moves on.
    Fewer tokens than views is refused: the reference's remainder loop never ends there.
    """
    if not 1 <= k <= sum(views):
        raise ValueError(f"cannot keep {k} of {sum(views)} visual tokens")
    if k < len(views):
        raise ValueError(f"cannot keep {k} visual token(s) over {len(views)} cameras: every camera keeps at least one "
                         "(the reference's quota loop never ends here); raise the keep ratio")
    w = view_weights(weights, len(views))
    least = 1
    quota = [max(least, round(k * x)) for x in w]
    order = sorted(range(len(views)), key=lambda c: -w[c])
    _fix_remainder(quota, k, order, floor=[least] * len(views), cap=[10**9] * len(views))
    if any(q > v for q, v in zip(quota, views)):  # reference would drop the excess; we redistribute
        quota = [min(q, v) for q, v in zip(quota, views)]
        _fix_remainder(quota, k, order, floor=[0] * len(views), cap=list(views))
    return tuple(quota)


def _fix_remainder(quota: list[int], k: int, order: list[int], floor: list[int], cap: list[int]) -> None:
    step = 1 if sum(quota) < k else -1
    while sum(quota) != k:
        moved = False
        for c in order:
            if sum(quota) == k:
                break
            if floor[c] <= quota[c] + step <= cap[c]:
                quota[c] += step
                moved = True
        if not moved:
            raise ValueError(f"cannot distribute {k} tokens over views {quota} within {cap}")
