"""Token selection (seed paper Eq. 10–12; reference ADP `predict_action`, spec §6.2).

    k   = r(ρ · L_vis)                                  r ∈ {round (reference code), ceil (paper tables), floor (Eq. 10)}
    k_c = quota of view c from the weights α (qk_keep_split), remainder fixed one token at a time
    keep = ⋃_c Top-k_c(Φ restricted to view c), in original order

``round`` is Python's banker's rounding, as the reference uses it (0.35·512 = 179.2 → 179). Where a
view's quota exceeds its size the reference silently loses the excess; here it moves to the other
views so that exactly k tokens are kept (the only deviation; it never triggers at LIBERO's splits).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vla_adp.pruning.keep import Keep

ROUNDINGS = ("round", "ceil", "floor")
MODES = ("top", "inverse", "random")
BUDGETS = ("global", "per_view")


def keep_count(n: int, ratio: float, rounding: str = "round") -> int:
    """Visual tokens kept of ``n`` at keep ratio ρ: max(1, r(ρ·n)), never more than n."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio!r}")
    x = n * ratio
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


def select_in_view(scores: Tensor, k: int, mode: str = "top", generator: torch.Generator | None = None) -> Tensor:
    """Indices (B, k) within one view: the k highest (``top``), lowest (``inverse``) or random, ascending."""
    if mode not in MODES:
        raise ValueError(f"selection mode must be one of {MODES}, got {mode!r}")
    b, n = scores.shape
    if mode == "random":
        idx = torch.stack([torch.randperm(n, generator=generator)[:k] for _ in range(b)]).to(scores.device)
    else:
        idx = scores.float().topk(k, dim=1, largest=(mode == "top")).indices
    return idx.sort(dim=1).values


def select_per_view(
    scores: Tensor,
    views: tuple[int, ...],
    quotas: tuple[int, ...],
    mode: str = "top",
    generator: torch.Generator | None = None,
    order: str = "position",
) -> Keep:
    """Eq. 11–12: per-view top-k of ``scores`` (B, V) -> a :class:`Keep` over all visual tokens.

    Args:
        order: ``position`` keeps each view's tokens in original order (reference, multi-view);
            ``score`` orders them by descending score (the reference's single-view global top-k
            with ``sorted=True``).
    """
    if scores.shape[1] != sum(views):
        raise ValueError(f"scores cover {scores.shape[1]} tokens, views {views} hold {sum(views)}")
    picks, start = [], 0
    for n, k in zip(views, quotas):
        if k:
            local = select_in_view(scores[:, start : start + n], k, mode, generator)
            if order == "score" and mode != "random":
                vals = scores[:, start : start + n].float().gather(1, local)
                local = local.gather(1, vals.argsort(dim=1, descending=(mode == "top")))
            picks.append(local + start)
        start += n
    return Keep(torch.cat(picks, dim=1), tuple(quotas))


def view_counts(visual: Tensor, views: tuple[int, ...]) -> tuple[int, ...]:
    """Kept tokens per camera of sorted indices (B, K); every batch row must split the same way."""
    bounds = torch.tensor([sum(views[: c + 1]) for c in range(len(views))], device=visual.device)
    per_row = torch.stack([(visual < b).sum(dim=1) for b in bounds], dim=1)  # (B, C) cumulative
    per_row = torch.diff(per_row, dim=1, prepend=torch.zeros_like(per_row[:, :1]))
    if (per_row != per_row[:1]).any():
        raise ValueError(f"batch rows keep different per-camera counts {per_row.tolist()}; "
                         "use the per_view budget for batches")
    return tuple(int(n) for n in per_row[0])


def select_top_budget(scores: Tensor, views: tuple[int, ...], ratio: float, budget: str = "per_view") -> Keep:
    """Top round(ρ·n) visual tokens of ``scores`` (B, V), ascending order.

    ``per_view``: each camera keeps round(ρ·n_c) of its own tokens (VLA-Pruner's OFT fork);
    ``global``: round(ρ·V) over all cameras together (FastV's single-image rule).
    """
    if budget == "per_view":
        return select_per_view(scores, views, tuple(keep_count(n, ratio) for n in views))
    if budget == "global":
        idx = scores.float().topk(keep_count(scores.shape[1], ratio), dim=1).indices.sort(dim=1).values
        return Keep(idx, view_counts(idx, views))
    raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
