"""Token selection (seed paper Eq. 10–12; chen7086/VLA-ADP ``predict_action``, docs/reference.md §4).

    k, k_c = the budgets of :mod:`vla_adp.seam.budget` (Eq. 10, per-camera quotas)
    keep = ⋃_c Top-k_c(Φ restricted to view c), in original order
"""

from __future__ import annotations

import torch
from torch import Tensor

from vla_adp.seam.budget import BUDGETS, SELECTIONS, keep_count
from vla_adp.seam.keep import KeepSet



def select_in_view(scores: Tensor, k: int, mode: str = "top", generator: torch.Generator | None = None) -> Tensor:
    """Indices (B, k) within one view: the k highest (``top``), lowest (``inverse``) or random, ascending."""
    if mode not in SELECTIONS:
        raise ValueError(f"selection mode must be one of {SELECTIONS}, got {mode!r}")
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
) -> KeepSet:
    """Eq. 11–12: per-view top-k of ``scores`` (B, V) -> a :class:`~vla_adp.seam.keep.KeepSet` over all visual tokens.

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
    return KeepSet(torch.cat(picks, dim=1), tuple(quotas))


def view_counts(visual: Tensor, views: tuple[int, ...]) -> tuple[int, ...]:
    """Kept tokens per camera of sorted indices (B, K); every batch row must split the same way."""
    bounds = torch.tensor([sum(views[: c + 1]) for c in range(len(views))], device=visual.device)
    per_row = torch.stack([(visual < b).sum(dim=1) for b in bounds], dim=1)  # (B, C) cumulative
    per_row = torch.diff(per_row, dim=1, prepend=torch.zeros_like(per_row[:, :1]))
    if (per_row != per_row[:1]).any():
        raise ValueError(f"batch rows keep different per-camera counts {per_row.tolist()}; "
                         "use the per_view budget for batches")
    return tuple(int(n) for n in per_row[0])


def select_top_budget(scores: Tensor, views: tuple[int, ...], keep_ratio: float, budget: str = "per_view") -> KeepSet:
    """Top round(ρ·n) visual tokens of ``scores`` (B, V), ascending order.

    ``per_view``: each camera keeps round(ρ·n_c) of its own tokens (VLA-Pruner's OFT fork);
    ``global``: round(ρ·V) over all cameras together (FastV's single-image rule).
    """
    if budget == "per_view":
        return select_per_view(scores, views, tuple(keep_count(n, keep_ratio) for n in views))
    if budget == "global":
        idx = scores.float().topk(keep_count(scores.shape[1], keep_ratio), dim=1).indices.sort(dim=1).values
        return KeepSet(idx, view_counts(idx, views))
    raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
