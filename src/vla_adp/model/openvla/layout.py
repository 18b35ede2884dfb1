"""The prefill sequence of OpenVLA: ``| BOS | patches | prompt … '▁' |`` (no proprio, no slots, no </s>).

    | BOS | image patches (V) | "In: What action should the robot take to …?\nOut:" '▁' |
      0     1 .. V             V+1 ..                                                   L-1

Upstream (``modeling_prismatic.py``, ``PrismaticForConditionalGeneration.forward``) inserts the
projected patches after BOS; the seven action tokens are generated one at a time after ``L-1`` and
never belong to the pruned span. :class:`PrefillLayout` is a :class:`~vla_adp.seam.layout.TokenLayout`
so that every pruner reads its spans unchanged: the last token (FastV's scoring row, ``stop``) is the
trailing '▁', the text queries of ADP's score are BOS and the prompt, and ``score_rows("prefill")``
covers the whole prefill.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vla_adp.seam.layout import TokenLayout


@dataclass(frozen=True)
class PrefillLayout(TokenLayout):
    """Spans of one OpenVLA query's prefill (``n_action`` and ``n_proprio`` are always 0)."""

    n_action: int = 0
    n_proprio: int = 0

    def __post_init__(self) -> None:
        if not self.views or any(v < 0 for v in self.views):
            raise ValueError(f"views must be non-negative token counts, got {self.views!r}")
        if self.n_prompt < 1:
            raise ValueError(f"OpenVLA's prefill needs at least one prompt token after BOS, got n_prompt={self.n_prompt!r}")
        if self.n_action or self.n_proprio:
            raise ValueError(f"OpenVLA's prefill has no action slots and no proprio token, got n_action="
                             f"{self.n_action!r}, n_proprio={self.n_proprio!r}")

    @property
    def length(self) -> int:
        return 1 + self.n_visual + self.n_prompt

    def text_positions(self) -> Tensor:
        """BOS and the prompt (incl. '▁'): the text queries of ADP's score (no </s> here)."""
        return torch.tensor([0, *range(self.prompt.start, self.prompt.stop)])

    def action_hidden(self, mode: str = "upstream") -> slice:
        raise ValueError("OpenVLA decodes its action tokens after the prefill; the prefill has no action slots")
