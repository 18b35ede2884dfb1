"""TokenLayout: where every kind of token sits in the multimodal sequence (docs/reference.md §2).

    | BOS | view 0 patches | view 1 patches | … | proprio | prompt … '▁' | action slots | </s> |
      0     1 ..                                                                          L-1

The model family builds it, once per query (``OFTArgs.token_layout`` for OpenVLA-OFT, reached
through ``model.layout(inputs)``); pruners, the keep-set gather and the FLOPs model read spans from
it instead of re-deriving offsets. After pruning the same layout with fewer tokens per view
describes the shorter sequence (:meth:`TokenLayout.with_views`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

ACTION_SLICES = ("upstream", "vla_adp")


@dataclass(frozen=True)
class TokenLayout:
    """Spans of one query's token sequence, in this order: BOS, the cameras' visual tokens, proprio,
    prompt, action slots, stop token.

    Args:
        views: visual tokens of each camera, in sequence order (image 0 = third-person view); a
            camera that is absent has 0.
        n_prompt: prompt ids after BOS, including the trailing '▁' (the reference's NUM_PROMPT_TOKENS).
        n_action: action slots (chunk × action_dim); 0 where the actions are decoded elsewhere (a
            flow-matching expert's suffix).
        n_proprio: 1 with a proprio token, else 0.
        n_bos: 1 with a BOS token before the visual tokens (OpenVLA), 0 where the sequence starts
            with the images (PaliGemma's prefix, whose BOS opens the prompt).
        n_stop: 1 with a closing </s> token (OpenVLA-OFT), else 0.
    """

    views: tuple[int, ...]
    n_prompt: int
    n_action: int
    n_proprio: int = 1
    n_bos: int = 1
    n_stop: int = 1

    def __post_init__(self) -> None:
        if not self.views or any(v < 0 for v in self.views):
            raise ValueError(f"views must be non-negative token counts, got {self.views!r}")
        if (self.n_prompt < 1 or self.n_action < 0 or self.n_proprio not in (0, 1) or self.n_bos not in (0, 1)
                or self.n_stop not in (0, 1)):
            raise ValueError(
                f"bad layout: n_prompt={self.n_prompt!r} (>=1), n_action={self.n_action!r} (>=0), "
                f"n_proprio={self.n_proprio!r}, n_bos={self.n_bos!r}, n_stop={self.n_stop!r} (each 0 or 1)"
            )

    # -- sizes -------------------------------------------------------------------------------
    @property
    def n_visual(self) -> int:
        return sum(self.views)

    @property
    def length(self) -> int:
        return self.n_bos + self.n_visual + self.n_proprio + self.n_prompt + self.n_action + self.n_stop

    # -- spans -------------------------------------------------------------------------------
    @property
    def bos(self) -> slice:
        return slice(0, self.n_bos)

    @property
    def visual(self) -> slice:
        start = self.bos.stop
        return slice(start, start + self.n_visual)

    def view(self, c: int) -> slice:
        """Sequence positions of camera ``c``'s tokens."""
        start = self.visual.start + sum(self.views[:c])
        return slice(start, start + self.views[c])

    def view_of_visual(self, c: int) -> slice:
        """Indices of camera ``c`` within the visual tokens (0-based)."""
        start = sum(self.views[:c])
        return slice(start, start + self.views[c])

    @property
    def proprio(self) -> slice:
        start = self.visual.stop
        return slice(start, start + self.n_proprio)

    @property
    def prompt(self) -> slice:
        start = self.proprio.stop
        return slice(start, start + self.n_prompt)

    @property
    def action(self) -> slice:
        start = self.prompt.stop
        return slice(start, start + self.n_action)

    @property
    def stop(self) -> int:
        """Position of the </s> stop token."""
        if not self.n_stop:
            raise ValueError("this layout has no stop token (n_stop=0)")
        return self.length - 1

    @property
    def last(self) -> int:
        """Position of the final token (the stop token where there is one)."""
        return self.length - 1

    def text_positions(self) -> Tensor:
        """BOS, prompt (incl. '▁') and the </s> stop token: ADP's scoring queries (docs/reference.md §4)."""
        b, p = self.bos, self.prompt
        return torch.tensor([*range(b.start, b.stop), *range(p.start, p.stop), *([self.stop] if self.n_stop else [])])

    def action_hidden(self, mode: str = "upstream") -> slice:
        """Positions whose final hidden states feed the action head (docs/reference.md §2).

        ``upstream``: start at the '▁' token, one before the first slot (matches OFT training).
        ``vla_adp``: the slots themselves (+1), as the reference ADP code does.
        """
        if mode not in ACTION_SLICES:
            raise ValueError(f"action slice must be one of {ACTION_SLICES}, got {mode!r}")
        start = self.action.start - (1 if mode == "upstream" else 0)
        return slice(start, start + self.n_action)

    def with_views(self, views: tuple[int, ...]) -> "TokenLayout":
        if len(views) != len(self.views):
            raise ValueError(f"expected {len(self.views)} view counts, got {views!r}")
        return replace(self, views=tuple(int(v) for v in views))
