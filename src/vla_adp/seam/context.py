"""The Pruner protocol: the one seam between a model family and every pruning method.

Per query :func:`~vla_adp.seam.query.run_query` calls ``begin(query)``; the pruner answers with the
decoder layers it wants to visit (empty: this query runs unpruned). The model stops before each of
those layers and calls ``at_layer(ctx)``, which may return a :class:`~vla_adp.seam.keep.KeepSet` to
shorten the sequence there (layer 0 = before the LLM). After the query ``end(outcome)`` feeds
temporal state (ADP's gate, VLA-Pruner's history). ``reset()`` starts a new episode.

A pruner sees the model only through :class:`LayerContext`: the layer's input, the token layout and
the accessors of the family's :class:`~vla_adp.seam.decoder.Decoder` (normed states, query/key
projections, attention rows with RoPE, the decoder's shape for FLOPs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import Tensor

from vla_adp.seam.decoder import Decoder, DecoderShape, Projections
from vla_adp.seam.keep import KeepSet, apply_keep_set
from vla_adp.seam.layout import TokenLayout


@dataclass
class Query:
    """What a pruner may know before the forward pass.

    Args:
        index: query number within the episode (0 = first).
        layout: the unpruned token layout; ``None`` until :func:`~vla_adp.seam.query.run_query` fills
            it in from the model (``model.layout(inputs)``).
        eef_pos: end-effector position (3,) at query time, from the raw state (platform.eef_pos).
        eef_rotvec: end-effector orientation as an axis-angle vector (3,), where the state has one.
        eef_path: end-effector positions recorded after every executed step since the previous
            query (optional; only the path-length displacement needs them).
        images: the camera images the model sees in this query, (H, W, 3) uint8 each, in view order
            (after the policy's resize and crop); VLA-Cache compares them with the previous query's.
    """

    index: int
    layout: TokenLayout | None = None
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
        decoder: the family's decoder accessors (:class:`~vla_adp.seam.decoder.Decoder`).
        key_mask: (B, S) bool, False on tokens no real token attends to (right-padding of a training
            batch, a π0 prompt's padding); None when every token is real.
        taps: the forward's attention taps, layer index -> :data:`~vla_adp.model.llm.AttentionTap`;
            a pruner may install taps for this and later layers (VLA-Cache's key/value reuse).
            ``None`` where the forward offers none (the batched multi-episode path).
    """

    index: int
    hidden: Tensor
    position_ids: Tensor
    layout: TokenLayout
    visual: Tensor
    decoder: Decoder
    key_mask: Tensor | None = None
    taps: dict | None = None

    @property
    def shape(self) -> DecoderShape:
        """The decoder's sizes, for the scorers' FLOPs (:mod:`vla_adp.seam.flops`)."""
        return self.decoder.shape

    def normed(self) -> Tensor:
        """This layer's input norm of the hidden states."""
        return self.decoder.normed(self.index, self.hidden)

    def norm_scale(self) -> tuple[Tensor, float]:
        """This layer's input RMSNorm as (effective weight, eps), for scorers that fold it in."""
        return self.decoder.norm_scale(self.index)

    def projections(self) -> Projections:
        """This layer's query/key projections (no RoPE) and head counts."""
        return self.decoder.projections(self.index)

    def attention_probs(self, rows: Tensor) -> Tensor:
        """Softmax attention of ``rows`` over all keys at this layer, RoPE included: (B, H, R, S);
        keys the ``key_mask`` hides get weight 0."""
        return self.decoder.attention_probs(self.index, self.hidden, self.position_ids, rows.to(self.hidden.device),
                                            key_mask=self.key_mask)

    def after_cut(self, keep_set: KeepSet) -> "LayerContext":
        """This layer's context on the sequence ``keep_set`` leaves: what the layer runs on when the hook
        returns ``keep_set`` (a pruner that reads the cutting layer itself scores that sequence)."""
        hidden, pos, layout = apply_keep_set(self.hidden, self.position_ids, self.layout, keep_set)
        return dataclasses.replace(self, hidden=hidden, position_ids=pos, layout=layout)

    def run_to(self, stop: int, hidden: Tensor, position_ids: Tensor, layout: TokenLayout) -> "LayerContext":
        """The context before layer ``stop`` after layers ``[index, stop)`` ran on another sequence
        (``hidden``, ``position_ids``, ``layout``): ADP's reference probe pass."""
        out = self.decoder.run_layers(hidden, position_ids, self.index, stop)
        return dataclasses.replace(self, index=stop, hidden=out, position_ids=position_ids, layout=layout,
                                   key_mask=None)


@dataclass
class QueryOutcome:
    """What happened in the query, for pruners with temporal state."""

    layout: TokenLayout
    actions: np.ndarray  # (chunk, dim) un-normalised
    keep_sets: list[KeepSet] = field(default_factory=list)


@runtime_checkable
class Pruner(Protocol):
    name: str

    def reset(self) -> None: ...

    def begin(self, query: Query) -> frozenset[int]: ...

    def at_layer(self, ctx: LayerContext) -> KeepSet | None: ...

    def end(self, outcome: QueryOutcome) -> dict[str, Any]: ...
