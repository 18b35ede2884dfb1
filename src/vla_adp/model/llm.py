"""A compact Llama-2 decoder with full bidirectional attention (docs/reference.md §3).

OpenVLA-OFT runs Llama-2 with *no causal mask*: its transformers fork patches the SDPA attention to
``is_causal=False`` (moojink/transformers-openvla-oft). This file is that decoder without the fork:

    embeds (B,S,D) ──► [DecoderLayer × L] ──► RMSNorm ──► hidden (B,S,D)
    DecoderLayer:  h = x + Attn(RMSNorm(x), RoPE(pos));  out = h + SwiGLU(RMSNorm(h))

Numerics follow HF Llama: RMSNorm in float32 with the weight applied after casting back, rotate-half
RoPE (Q/K weights are stored in HF's permuted layout) with cos/sin computed in float32, SDPA.
Each layer is an entry point of its own (:meth:`LlamaDecoder.run_layers`) so that a pruner can cut
the sequence before the LLM or between layers; :meth:`Attention.scores` gives one layer's q·kᵀ for
the rows a scorer asks for, so that no other layer leaves SDPA. An optional *attention tap* per layer
(:data:`AttentionTap`) sees that layer's query/key/value projections and may append keys/values that
no current row produced (VLA-Cache's reuse of the previous query's keys/values); without taps every
layer computes exactly what it did before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_adp.model.config import LlamaArgs
from vla_adp.model.invariance import silu_per_row
from vla_adp.seam.decoder import DecoderShape, Projections

# (q (B, H, S, hd), k (B, Hkv, S, hd), v (B, Hkv, S, hd), key mask (B, 1, 1, S) or None), RoPE applied
# -> the keys, values and key mask this layer's attention runs over (S' >= S keys; extra keys are
# appended after the current rows'). Bidirectional attention has no key order, so appended keys act
# exactly like keys at their own positions as long as their RoPE was applied at those positions.
AttentionTap = Callable[[Tensor, Tensor, Tensor, "Tensor | None"], "tuple[Tensor, Tensor, Tensor | None]"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(position_ids: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin of HF's rotate-half RoPE for integer positions (B, S) -> 2 × (B, S, head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.float()[..., None] * inv_freq  # (B, S, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, H, S, hd); cos/sin: (B, S, hd)."""
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


class Attention(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        # "eager" spells out softmax(qkᵀ/√d)·v: FLOP counters see it (they miss CPU SDPA kernels).
        self.impl = "sdpa"
        self.q_proj = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        b, s, _ = x.shape
        return x.view(b, s, n, self.head_dim).transpose(1, 2)  # (B, n, S, hd)

    def _expand_kv(self, x: Tensor) -> Tensor:
        rep = self.n_heads // self.n_kv_heads
        return x if rep == 1 else x.repeat_interleave(rep, dim=1)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                tap: AttentionTap | None = None) -> Tensor:
        q = apply_rope(self._heads(self.q_proj(x), self.n_heads), cos, sin)
        k = apply_rope(self._heads(self.k_proj(x), self.n_kv_heads), cos, sin)
        v = self._heads(self.v_proj(x), self.n_kv_heads)
        if tap is not None:  # may append keys/values no current row produced (VLA-Cache)
            k, v, mask = tap(q, k, v, mask)
        k, v = self._expand_kv(k), self._expand_kv(v)
        # Bidirectional: no causal mask. `mask` only hides right-padding keys in batched training.
        if self.impl == "eager":
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if mask is not None:
                logits = logits.masked_fill(~mask, float("-inf"))
            out = logits.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        b, _, s, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))

    def probs(self, x: Tensor, cos: Tensor, sin: Tensor, rows: Tensor) -> Tensor:
        """Softmax attention weights of the query ``rows`` over all keys: (B, H, R, S).

        The same numbers SDPA uses internally, computed only for the rows a scorer needs (FastV's last
        row, VLA-Pruner's action slots), so that this layer still runs SDPA for its output.
        """
        q = apply_rope(self._heads(self.q_proj(x[:, rows]), self.n_heads), cos[:, rows], sin[:, rows])
        k = self._expand_kv(apply_rope(self._heads(self.k_proj(x), self.n_kv_heads), cos, sin))
        logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        return logits.softmax(dim=-1)


class FeedForward(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.ffn_dim, bias=False)
        self.down_proj = nn.Linear(args.ffn_dim, args.dim, bias=False)
        self.batch_invariant = False  # SiLU row by row (vla_adp.model.invariance)

    def forward(self, x: Tensor) -> Tensor:
        act = silu_per_row if self.batch_invariant else F.silu
        return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.rms_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = RMSNorm(args.dim, args.rms_eps)
        self.mlp = FeedForward(args)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                tap: AttentionTap | None = None) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, tap)
        return h + self.mlp(self.post_attention_layernorm(h))


class LayerAccess:
    """The seam's per-layer accessors (:class:`vla_adp.seam.decoder.Decoder`) for a Llama-style
    decoder: ``args``, ``layers[i].input_layernorm`` / ``.self_attn`` and ``rope``. Shared by the
    bidirectional decoder here and OpenVLA's causal one (:mod:`vla_adp.model.openvla.decoder`)."""

    @property
    def shape(self) -> DecoderShape:
        return self.args.shape

    def normed(self, index: int, hidden: Tensor) -> Tensor:
        return self.layers[index].input_layernorm(hidden)

    def norm_scale(self, index: int) -> tuple[Tensor, float]:
        norm = self.layers[index].input_layernorm
        return norm.weight, norm.eps

    def projections(self, index: int) -> Projections:
        attn = self.layers[index].self_attn
        return Projections(attn.q_proj, attn.k_proj, attn.n_heads, attn.n_kv_heads, attn.head_dim)

    def attention_probs(self, index: int, hidden: Tensor, position_ids: Tensor, rows: Tensor,
                        key_mask: Tensor | None = None) -> Tensor:
        cos, sin = self.rope(position_ids, hidden.dtype)
        probs = self.layers[index].self_attn.probs(self.normed(index, hidden), cos, sin, rows)
        if key_mask is None:
            return probs
        # masked keys out, the rest renormalised: softmax over the real keys only (as the layer's SDPA mask)
        probs = probs * key_mask[:, None, None, :].to(probs.dtype)
        return probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-30)


class LlamaDecoder(LayerAccess, nn.Module):
    """Llama-2 without its causal mask. Parameter names follow HF's ``LlamaForCausalLM``.

    Also the family's :class:`~vla_adp.seam.decoder.Decoder`: the per-layer accessors a pruner's
    :class:`~vla_adp.seam.context.LayerContext` reaches it through.
    """

    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(DecoderLayer(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.rms_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)  # discrete-bin path only

    def set_attention(self, impl: str) -> None:
        """``sdpa`` (default) or ``eager`` (for FLOP counting) in every layer."""
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"attention implementation must be 'sdpa' or 'eager', got {impl!r}")
        for layer in self.layers:
            layer.self_attn.impl = impl

    def set_batch_invariant(self, on: bool) -> None:
        """Run the MLP's SiLU row by row in every layer (:mod:`vla_adp.model.invariance`)."""
        for layer in self.layers:
            layer.mlp.batch_invariant = bool(on)

    def rope(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(position_ids, self.args.head_dim, self.args.rope_theta, dtype)

    def run_layers(
        self, x: Tensor, position_ids: Tensor, start: int, stop: int, key_mask: Tensor | None = None,
        taps: dict[int, AttentionTap] | None = None,
    ) -> Tensor:
        """Run decoder layers ``[start, stop)`` on x (B, S, D) at integer positions (B, S).

        Args:
            key_mask: optional (B, S) bool, False for padding keys (batched training only).
            taps: optional attention tap per layer index (see :data:`AttentionTap`).
        """
        cos, sin = self.rope(position_ids, x.dtype)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        for i in range(start, stop):
            x = self.layers[i](x, cos, sin, mask, taps.get(i) if taps else None)
        return x

    def forward(self, x: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """Full decoder, final RMSNorm applied (= HF ``hidden_states[-1]``)."""
        if position_ids is None:
            position_ids = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        return self.norm(self.run_layers(x, position_ids, 0, len(self.layers)))
