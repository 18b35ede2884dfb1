"""Turn a keep set into the shorter sequence (ADP Eq. 13; FastV / VLA-Pruner in-place dropping).

One routine for every pruner and every family whose sequence a :class:`~vla_adp.seam.layout.TokenLayout`
describes: everything before the visual tokens (BOS) and everything after them stays; the kept visual
tokens keep their order in the keep set (ascending unless a pruner deliberately orders them
otherwise). The keep set says how the shorter sequence is numbered: ``contiguous`` (0..L'-1, as ADP's
reference builds a fresh sequence) or ``original`` (the kept tokens keep their RoPE positions, as
FastV, VLA-Pruner and LightVLA do).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from vla_adp.seam.layout import TokenLayout

POSITION_MODES = ("contiguous", "original")


@dataclass(frozen=True)
class KeepSet:
    """Which visual tokens stay, and how the shorter sequence is numbered.

    Args:
        visual_index: (B, K) indices into the visual tokens (0..V-1).
        views: kept count per camera (sums to K); the indices of camera c come c-th.
        tokens: optional (B, K, D) replacement for the gathered visual states (LightVLA's
            straight-through training path); ``None`` gathers ``hidden[:, visual_index]``.
        positions: ``contiguous`` (renumber 0..L'-1) or ``original`` (keep the RoPE positions).
    """

    visual_index: Tensor
    views: tuple[int, ...]
    tokens: Tensor | None = None
    positions: str = "contiguous"

    def __post_init__(self) -> None:
        if self.visual_index.dim() != 2:
            raise ValueError(f"KeepSet.visual_index must be (B, K), got shape {tuple(self.visual_index.shape)}")
        if sum(self.views) != self.visual_index.shape[1]:
            raise ValueError(f"KeepSet.views {self.views} does not sum to K={self.visual_index.shape[1]}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"KeepSet.positions must be one of {POSITION_MODES}, got {self.positions!r}")

    @property
    def n_kept(self) -> int:
        return self.visual_index.shape[1]

    def with_positions(self, positions: str) -> "KeepSet":
        """The same tokens, numbered ``positions`` in the shorter sequence."""
        return self if positions == self.positions else dataclasses.replace(self, positions=positions)


def keep_all(layout: TokenLayout, batch: int = 1, device=None) -> KeepSet:
    idx = torch.arange(layout.n_visual, device=device).expand(batch, -1)
    return KeepSet(idx, layout.views)


def sequence_index(layout: TokenLayout, keep_set: KeepSet) -> Tensor:
    """(B, L') positions of the old sequence that make the new one."""
    b = keep_set.visual_index.shape[0]
    dev = keep_set.visual_index.device
    head = torch.arange(0, layout.visual.start, device=dev).expand(b, -1)
    tail = torch.arange(layout.visual.stop, layout.length, device=dev).expand(b, -1)
    return torch.cat([head, keep_set.visual_index + layout.visual.start, tail], dim=1)


def apply_keep_set(hidden: Tensor, position_ids: Tensor, layout: TokenLayout,
                   keep_set: KeepSet) -> tuple[Tensor, Tensor, TokenLayout]:
    """Gather the kept rows: (B, L, D), (B, L) -> (B, L', D), (B, L'), layout'."""
    index = sequence_index(layout, keep_set)
    new = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
    if keep_set.tokens is not None:
        vis = slice(layout.visual.start, layout.visual.start + keep_set.n_kept)
        new = torch.cat([new[:, : vis.start], keep_set.tokens.to(new.dtype), new[:, vis.stop :]], dim=1)
    if keep_set.positions == "original":
        new_pos = position_ids.gather(1, index)
    else:
        new_pos = torch.arange(index.shape[1], device=hidden.device).expand(index.shape[0], -1)
    return new, new_pos, layout.with_views(keep_set.views)
