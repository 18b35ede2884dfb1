"""Turn a keep set into the shorter sequence (ADP Eq. 13; FastV/VLA-Pruner in-place dropping).

One routine for every pruner: BOS and everything after the visual tokens stay; the kept visual
tokens keep their original order (unless a pruner deliberately orders them otherwise). Position ids
are either ``contiguous`` (0..L'-1, as ADP's reference builds a fresh sequence) or ``original``
(the kept tokens keep their RoPE positions, as FastV, VLA-Pruner and LightVLA do).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vla_adp.pruning.layout import TokenLayout

POSITION_MODES = ("contiguous", "original")


@dataclass(frozen=True)
class Keep:
    """Which visual tokens stay.

    Args:
        visual: (B, K) indices into the visual tokens (0..V-1).
        views: kept count per camera (sums to K); the indices of camera c come c-th.
        tokens: optional (B, K, D) replacement for the gathered visual states (LightVLA's
            straight-through training path); ``None`` gathers ``hidden[:, visual]``.
    """

    visual: Tensor
    views: tuple[int, ...]
    tokens: Tensor | None = None

    def __post_init__(self) -> None:
        if self.visual.dim() != 2:
            raise ValueError(f"Keep.visual must be (B, K), got shape {tuple(self.visual.shape)}")
        if sum(self.views) != self.visual.shape[1]:
            raise ValueError(f"Keep.views {self.views} does not sum to K={self.visual.shape[1]}")

    @property
    def k(self) -> int:
        return self.visual.shape[1]


def keep_all(layout: TokenLayout, batch: int = 1, device=None) -> Keep:
    idx = torch.arange(layout.n_visual, device=device).expand(batch, -1)
    return Keep(idx, layout.views)


def sequence_index(layout: TokenLayout, keep: Keep) -> Tensor:
    """(B, L') positions of the old sequence that make the new one."""
    b = keep.visual.shape[0]
    dev = keep.visual.device
    head = torch.zeros(b, 1, dtype=torch.long, device=dev)
    tail = torch.arange(layout.visual.stop, layout.length, device=dev).expand(b, -1)
    return torch.cat([head, keep.visual + layout.visual.start, tail], dim=1)


def apply_keep(
    hidden: Tensor, position_ids: Tensor, layout: TokenLayout, keep: Keep, positions: str = "contiguous"
) -> tuple[Tensor, Tensor, TokenLayout]:
    """Gather the kept rows: (B, L, D), (B, L) -> (B, L', D), (B, L'), layout'."""
    if positions not in POSITION_MODES:
        raise ValueError(f"positions must be one of {POSITION_MODES}, got {positions!r}")
    index = sequence_index(layout, keep)
    new = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    if keep.tokens is not None:
        vis = slice(1, 1 + keep.k)
        new = torch.cat([new[:, : vis.start], keep.tokens.to(new.dtype), new[:, vis.stop :]], dim=1)
    if positions == "original":
        new_pos = position_ids.gather(1, index)
    else:
        new_pos = torch.arange(index.shape[1], device=hidden.device).expand(index.shape[0], -1)
    return new, new_pos, layout.with_views(keep.views)
