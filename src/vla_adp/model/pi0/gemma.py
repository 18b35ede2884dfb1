"""Gemma decoder layers, and π0's "mixture of transformers": two Gemmas sharing one attention.

Gemma (transformers' ``models/gemma/modeling_gemma.py``; openpi ``src/openpi/models/gemma.py``):

    h   = x + o_proj(Attn(RoPE(q), RoPE(k), v))      q,k,v from RMSNorm₁(x); 1 kv head = MQA
    out = h + down(gelu_tanh(gate(n)) · up(n))        n = RMSNorm₂(h)    (GeGLU)
    RMSNorm(x) = x / rms(x) · (1 + w)                 (weights stored as offsets from 1)

π0.5's expert replaces each RMSNorm by adaRMS (openpi ``gemma.py::RMSNorm`` with ``cond``;
LeRobot ``policies/pi_gemma.py::PiGemmaRMSNorm``): ``[scale, shift, gate] = dense(c)``, the norm
gives ``x/rms(x) · (1 + scale) + shift`` and the residual becomes ``x + y · gate``.

Mixture (π0 paper §3, Fig. 3; openpi ``models_pytorch/gemma_pytorch.py::PaliGemmaWithExpertModel``):
at every layer each expert projects *its own* tokens with *its own* weights, the queries, keys and
values of all tokens are concatenated along the sequence and attend jointly under one mask, and the
output is split back so that each expert applies its own o_proj, norms and MLP:

    prefix tokens ─ VLM layer i ─┐                ┌─ VLM o_proj, MLP ─► prefix
                                 ├─ joint attn ───┤
    suffix tokens ─ expert i ────┘   (one mask)   └─ expert o_proj, MLP ─► suffix

Passing ``past`` (keys/values of earlier tokens, after RoPE) lets the suffix attend to a cached
prefix: the denoising loop computes the prefix once and reuses it at every step.

:class:`GemmaDecoder` is also the family's :class:`~vla_adp.seam.decoder.Decoder`: the per-layer
accessors a pruner's :class:`~vla_adp.seam.context.LayerContext` reads (the ``(1+w)`` norm as an
effective weight, multi-query projections with their own ``head_dim``, attention rows with RoPE and
the prefix's key mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_adp.model.llm import apply_rope, rope_cos_sin
from vla_adp.model.pi0.config import GemmaArgs
from vla_adp.model.pi0.masks import attention_mask_2d, mask_bias
from vla_adp.seam.decoder import DecoderShape, Projections

KV = tuple[Tensor, Tensor]  # keys, values of one layer: (B, kv_heads, S, head_dim) each, after RoPE


class RMSNorm(nn.Module):
    """Gemma RMSNorm; ``forward`` returns ``(normed, None)`` to share adaRMS's signature."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, None]:
        return (rms_normalize(x, self.eps) * (1.0 + self.weight.float())).type_as(x), None


class AdaRMSNorm(nn.Module):
    """adaRMS: scale, shift and a residual gate from the conditioning vector (π0.5's time)."""

    def __init__(self, dim: int, eps: float, cond_dim: int):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_dim, 3 * dim)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if cond is None:
            raise ValueError("adaRMS needs a conditioning vector (the expert's time embedding), got None")
        scale, shift, gate = self.dense(cond.to(self.dense.weight.dtype))[:, None].chunk(3, dim=-1)  # (B, 1, D) each
        normed = rms_normalize(x, self.eps) * (1 + scale.float()) + shift.float()
        return normed.to(x.dtype), gate.to(x.dtype)


def rms_normalize(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x²) + eps), in float32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def gated_residual(x: Tensor, y: Tensor, gate: Tensor | None) -> Tensor:
    return x + y if gate is None else x + y * gate


class GemmaAttentionProj(nn.Module):
    """The four bias-free projections of one Gemma attention (the attention itself is shared)."""

    def __init__(self, args: GemmaArgs):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        self.q_proj = nn.Linear(args.width, args.num_heads * args.head_dim, bias=False)
        self.k_proj = nn.Linear(args.width, args.num_kv_heads * args.head_dim, bias=False)
        self.v_proj = nn.Linear(args.width, args.num_kv_heads * args.head_dim, bias=False)
        self.o_proj = nn.Linear(args.num_heads * args.head_dim, args.width, bias=False)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, S, D) -> q (B, H, S, hd), k and v (B, KV, S, hd), before RoPE."""
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v


class GemmaMLP(nn.Module):
    def __init__(self, args: GemmaArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.width, args.mlp_dim, bias=False)
        self.up_proj = nn.Linear(args.width, args.mlp_dim, bias=False)
        self.down_proj = nn.Linear(args.mlp_dim, args.width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class GemmaLayer(nn.Module):
    """One expert's weights for one layer; :func:`mixed_layer` runs the layer across experts."""

    def __init__(self, args: GemmaArgs, cond_dim: int | None = None):
        super().__init__()
        norm = (lambda: AdaRMSNorm(args.width, args.rms_eps, cond_dim)) if cond_dim else (
            lambda: RMSNorm(args.width, args.rms_eps))
        self.input_layernorm = norm()
        self.self_attn = GemmaAttentionProj(args)
        self.post_attention_layernorm = norm()
        self.mlp = GemmaMLP(args)

    def finish(self, x: Tensor, attn: Tensor, gate: Tensor | None, cond: Tensor | None) -> Tensor:
        """Residual after attention, then the MLP half of the layer."""
        h = gated_residual(x, self.self_attn.o_proj(attn.to(self.self_attn.o_proj.weight.dtype)), gate)
        n, gate = self.post_attention_layernorm(h, cond)
        return gated_residual(h, self.mlp(n), gate)


class GemmaDecoder(nn.Module):
    """A stack of :class:`GemmaLayer` and the final norm (+ token embeddings for the VLM)."""

    def __init__(self, args: GemmaArgs, vocab_size: int | None = None, adarms: bool = False):
        super().__init__()
        self.args = args
        cond_dim = args.width if adarms else None
        self.embed_tokens = nn.Embedding(vocab_size, args.width) if vocab_size else None
        self.layers = nn.ModuleList(GemmaLayer(args, cond_dim) for _ in range(args.depth))
        self.norm = AdaRMSNorm(args.width, args.rms_eps, cond_dim) if adarms else RMSNorm(args.width, args.rms_eps)

    def embed(self, tokens: Tensor) -> Tensor:
        """Token embeddings times sqrt(width) (Gemma's input scaling; images are not scaled)."""
        if self.embed_tokens is None:
            raise ValueError("this decoder has no token embeddings (the action expert takes embeddings only)")
        return self.embed_tokens(tokens) * torch.tensor(self.args.width ** 0.5, dtype=self.embed_tokens.weight.dtype)

    # -- the seam's Decoder accessors (VLM prefix layers: plain RMSNorm, no adaRMS) ------------------
    @property
    def shape(self) -> DecoderShape:
        a = self.args
        return DecoderShape(a.depth, a.width, a.mlp_dim, a.num_heads, a.num_kv_heads, a.head_dim)

    def normed(self, index: int, hidden: Tensor) -> Tensor:
        return self.layers[index].input_layernorm(hidden, None)[0]

    def norm_scale(self, index: int) -> tuple[Tensor, float]:
        """Gemma stores w with the norm computing ``x/rms · (1 + w)``: the effective weight is 1 + w."""
        norm = self.layers[index].input_layernorm
        if not isinstance(norm, RMSNorm):
            raise ValueError("adaRMS layers have no fixed norm weight (it depends on the time conditioning)")
        return 1.0 + norm.weight.float(), norm.eps

    def projections(self, index: int) -> Projections:
        attn = self.layers[index].self_attn
        return Projections(attn.q_proj, attn.k_proj, attn.heads, attn.kv_heads, attn.head_dim)

    def attention_probs(self, index: int, hidden: Tensor, position_ids: Tensor, rows: Tensor,
                        key_mask: Tensor | None = None) -> Tensor:
        """Softmax attention (B, H, R, S) of the query ``rows`` over every key, float32, as the layer
        computes it (RoPE, openpi's masked logit on ``key_mask``'s False keys); the layer keeps its own."""
        attn = self.layers[index].self_attn
        n = self.normed(index, hidden)
        (b, s, _), r = n.shape, len(rows)
        q = attn.q_proj(n[:, rows]).view(b, r, attn.heads, attn.head_dim).transpose(1, 2)  # only the rows asked for
        k = attn.k_proj(n).view(b, s, attn.kv_heads, attn.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(position_ids, attn.head_dim, self.args.rope_theta, q.dtype)
        q, k = apply_rope(q, cos[:, rows], sin[:, rows]), apply_rope(k, cos, sin)
        k = k.repeat_interleave(attn.heads // attn.kv_heads, dim=1)
        logits = (q @ k.transpose(-1, -2)) * attn.head_dim ** -0.5
        if key_mask is not None:
            logits = logits + mask_bias(key_mask[:, None, :].expand(-1, len(rows), -1), logits.dtype)
        return logits.softmax(dim=-1, dtype=torch.float32)

    def run_layers(self, hidden: Tensor, position_ids: Tensor, start: int, stop: int,
                   key_mask: Tensor | None = None) -> Tensor:
        """Layers ``[start, stop)`` over a prefix alone (one bidirectional block; ``key_mask`` hides padding)."""
        pad = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if key_mask is None else key_mask
        bias = mask_bias(attention_mask_2d(pad, torch.zeros_like(pad)), hidden.dtype)
        for i in range(start, stop):
            (hidden,), _ = mixed_layer([self.layers[i]], [hidden], [None], bias, position_ids, self.args.rope_theta)
        return hidden


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, probs_out: list | None = None) -> Tensor:
    """Eager grouped-query attention: q (B,H,Sq,hd), k/v (B,KV,Sk,hd), bias (B,1,Sq,Sk) -> (B,Sq,H·hd).

    ``probs_out``: a list that receives the softmax weights (B, H, Sq, Sk) in float32 (an attention
    tap for observers: the weights are the ones this attention uses, nothing is recomputed)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + bias
    probs = scores.softmax(dim=-1, dtype=torch.float32)
    if probs_out is not None:
        probs_out.append(probs)
    probs = probs.to(q.dtype)
    out = probs @ v  # (B, H, Sq, hd)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def mixed_layer(
    layers: list[GemmaLayer], xs: list[Tensor | None], conds: list[Tensor | None], bias: Tensor,
    position_ids: Tensor, rope_theta: float, past: KV | None = None, probs_out: list | None = None,
) -> tuple[list[Tensor | None], KV]:
    """One layer of the mixture over the experts' token segments (``None`` = expert not run).

    Args:
        layers: layer i of each expert.
        xs: each expert's tokens (B, S_e, D_e), concatenated in this order along the sequence.
        conds: each expert's adaRMS conditioning (B, D_e) or None.
        bias: additive mask (B, 1, S, S_past + S) over [past, these tokens].
        position_ids: (B, S) RoPE positions of these tokens.
        past: keys/values of earlier tokens (e.g. the cached prefix), prepended to this layer's.
        probs_out: receives this layer's attention weights (B, H, S, S_past + S), float32 (:func:`attend`).

    Returns:
        Each expert's output (None where it was not run) and this layer's keys/values
        (including ``past``), i.e. what a later call would pass as ``past``.
    """
    run = [(i, layer, x, c) for i, (layer, x, c) in enumerate(zip(layers, xs, conds, strict=True)) if x is not None]
    projected, gates = [], {}
    for i, layer, x, c in run:
        n, gates[i] = layer.input_layernorm(x, c)
        projected.append(layer.self_attn.qkv(n))
    q, k, v = (torch.cat(parts, dim=2) for parts in zip(*projected, strict=True))
    cos, sin = rope_cos_sin(position_ids, q.shape[-1], rope_theta, q.dtype)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    out = attend(q, k, v, bias, probs_out)
    outs: list[Tensor | None] = [None] * len(xs)
    start = 0
    for i, layer, x, c in run:
        seg = out[:, start:start + x.shape[1]]
        outs[i] = layer.finish(x, seg, gates[i], c)
        start += x.shape[1]
    return outs, (k, v)
