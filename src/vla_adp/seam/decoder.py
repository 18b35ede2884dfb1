"""What a model family's decoder gives the seam: its shape and a few per-layer accessors.

A family's language model implements :class:`Decoder` (OpenVLA-OFT's
:class:`~vla_adp.model.llm.LlamaDecoder` does); a :class:`~vla_adp.seam.context.LayerContext` hands
these to the pruners, so that no scorer names a family's module paths (``layers[i].self_attn.q_proj``)
and the FLOPs arithmetic (:mod:`vla_adp.seam.flops`) needs only the :class:`DecoderShape`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@dataclass(frozen=True)
class DecoderShape:
    """The sizes the FLOPs model needs: H layers of width D, MLP width M, attention heads.

    Args:
        n_layers: decoder layers (H).
        dim: hidden width (D).
        ffn_dim: MLP width (M).
        n_heads / n_kv_heads / head_dim: query heads, key/value heads (grouped-query attention),
            width of one head (Llama: D / n_heads; Gemma may differ).
    """

    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for name in ("n_layers", "dim", "ffn_dim", "n_heads", "n_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"DecoderShape.{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"DecoderShape.n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")


@dataclass(frozen=True)
class Projections:
    """One layer's query and key projections (before RoPE), with the head counts to split them."""

    q: nn.Linear
    k: nn.Linear
    n_heads: int
    n_kv_heads: int
    head_dim: int


@runtime_checkable
class Decoder(Protocol):
    """Per-layer access a family's decoder gives to :class:`~vla_adp.seam.context.LayerContext`."""

    @property
    def shape(self) -> DecoderShape: ...

    def normed(self, index: int, hidden: Tensor) -> Tensor:
        """Layer ``index``'s input norm applied to ``hidden`` (B, S, D)."""

    def norm_scale(self, index: int) -> tuple[Tensor, float]:
        """The effective weight (D,) and epsilon of layer ``index``'s input RMSNorm."""

    def projections(self, index: int) -> Projections:
        """Layer ``index``'s query/key projections (no RoPE)."""

    def attention_probs(self, index: int, hidden: Tensor, position_ids: Tensor, rows: Tensor,
                        key_mask: Tensor | None = None) -> Tensor:
        """Softmax attention of the query ``rows`` over all keys at layer ``index``, RoPE included:
        (B, H, R, S) in float32, from the layer's input ``hidden``; keys where ``key_mask`` (B, S) is
        False (padding, a masked camera) get weight 0."""

    def run_layers(self, hidden: Tensor, position_ids: Tensor, start: int, stop: int,
                   key_mask: Tensor | None = None) -> Tensor:
        """Decoder layers ``[start, stop)`` on ``hidden`` (B, S, D) at positions (B, S)."""
