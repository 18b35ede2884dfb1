"""The Pruner protocol: the one seam between the model and every pruning method.

Per query the policy calls ``begin(query)``; the pruner answers with the decoder layers it wants to
visit (empty: this query runs unpruned). The model stops before each of those layers and calls
``at_layer(ctx)``, which may return a :class:`~vla_adp.pruning.keep.Keep` to shorten the sequence
there (layer 0 = before the LLM). After the query ``end(outcome)`` feeds temporal state (ADP's gate,
VLA-Pruner's history). ``reset()`` starts a new episode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from vla_adp.pruning.keep import Keep
from vla_adp.pruning.layout import TokenLayout


@dataclass
class Query:
    """What a pruner may know before the forward pass.

    Args:
        index: query number within the episode (0 = first).
        layout: the unpruned token layout.
        eef_pos: end-effector position (3,) at query time, from the raw state (platform.eef_pos).
        eef_rotvec: end-effector orientation as an axis-angle vector (3,), where the state has one.
        eef_path: end-effector positions recorded after every executed step since the previous
            query (optional; only the path-length displacement needs them).
        images: the camera images the model sees in this query, (H, W, 3) uint8 each, in view order
            (after the policy's resize and crop); VLA-Cache compares them with the previous query's.
    """

    index: int
    layout: TokenLayout
    eef_pos: np.ndarray | None = None
    eef_rotvec: np.ndarray | None = None
    eef_path: list[np.ndarray] = field(default_factory=list)
    images: tuple[np.ndarray, ...] | None = None


@dataclass
class LayerContext:
    """The model's state just before decoder layer ``index`` runs.

    Args:
        hidden: (B, S, D) input of layer ``index`` (layer 0: the embeddings).
        position_ids: (B, S) RoPE positions.
        layout: current layout (already pruned if an earlier layer cut).
        visual: (B, V, D) projector outputs of all visual tokens (VLA-Pruner's diversity features).
        llm: the decoder (its ``layers[index]`` gives the scoring projections).
        key_mask: (B, S) bool, False on right-padding tokens of a training batch; None otherwise.
        taps: the forward's attention taps, layer index -> :data:`~vla_adp.model.llm.AttentionTap`;
            a pruner may install taps for this and later layers (VLA-Cache's key/value reuse).
            ``None`` where the forward offers none (the batched multi-episode path).
    """

    index: int
    hidden: Tensor
    position_ids: Tensor
    layout: TokenLayout
    visual: Tensor
    llm: Any
    inputs: Any = None
    key_mask: Tensor | None = None
    taps: dict | None = None

    @property
    def layer(self):
        return self.llm.layers[self.index]

    def normed(self) -> Tensor:
        """This layer's ``input_layernorm`` of the hidden states."""
        return self.layer.input_layernorm(self.hidden)

    def attention_probs(self, rows: Tensor) -> Tensor:
        """Softmax attention of ``rows`` over all keys at this layer, RoPE included: (B, H, R, S)."""
        cos, sin = self.llm.rope(self.position_ids, self.hidden.dtype)
        return self.layer.self_attn.probs(self.normed(), cos, sin, rows.to(self.hidden.device))


@dataclass
class QueryOutcome:
    """What happened in the query, for pruners with temporal state."""

    layout: TokenLayout
    actions: np.ndarray  # (chunk, dim) un-normalised
    keeps: list[Keep] = field(default_factory=list)


@runtime_checkable
class Pruner(Protocol):
    name: str

    def reset(self) -> None: ...

    def begin(self, query: Query) -> frozenset[int]: ...

    def at_layer(self, ctx: LayerContext) -> Keep | None: ...

    def end(self, outcome: QueryOutcome) -> dict[str, Any]: ...


def visual_index_of_views(layout: TokenLayout, device=None) -> list[torch.Tensor]:
    """Per camera, the visual-token indices (0..V-1) it owns."""
    return [torch.arange(layout.view_of_visual(c).start, layout.view_of_visual(c).stop, device=device)
            for c in range(len(layout.views))]
