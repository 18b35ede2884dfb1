"""Visual-token scores (pure functions).

ADP's text-driven score (seed paper Eq. 7–9; chen7086/VLA-ADP ``predict_action``, docs/reference.md §4): at layer ℓ,
apply ℓ's ``input_layernorm`` to the hidden states, project the text tokens (BOS, prompt incl. '▁',
and the </s> stop token) with W_Q and the visual tokens with W_K, *no RoPE, no softmax*, and average
the scaled dot products over heads and text tokens:

    Φ(v) = 1/(N_h·T) Σ_h Σ_t  q_{h,t} · k_{h,v} / √d

Because Φ is linear in q, the mean over text tokens can be taken first:
Φ(v) = 1/N_h Σ_h  q̄_h · k_{h,v} / √d with q̄ = W_Q·mean_t(x_t) — the same number (up to float
rounding) for T times less work on the text side (``method="fused"``). ``method="exact"``
builds the full (N_h, T, V) matrix as the reference does, for fidelity checks.

``method="folded"`` goes one step further: Φ is also linear in k = W_K·x̂_v, so W_K can be folded
into the averaged query, u = Σ_h W_{K,h}ᵀ q̄_h (one D×D mat-vec), and Φ(v) = x̂_v·u / (N_h·√d):
the K projection of the V visual tokens (2·V·D² FLOPs, what dominates ``fused``) becomes a V×D
mat-vec. From the layer input, the RMSNorm weight folds into u as well and only the per-token
rms of the visual rows is needed (:func:`folded_text_vision_scores`). Same Φ in exact arithmetic;
in bf16 it rounds at different places than ``fused`` (it skips the bf16 round trips of the norm
and of k), so near-ties may rank differently. ADP uses ``folded`` by default: layer-0 scoring then
costs 0.1–0.2 % (fp32) / 0.5–0.9 % (bf16) of an unpruned query on the scaled benchmark model
(benchmarks/RESULTS.md), against 0.7–1.7 % for ``fused``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from vla_adp.seam.context import LayerContext
from vla_adp.seam.flops import SCORING_METHODS
from vla_adp.seam.layout import TokenLayout


def _heads(x: Tensor, n_heads: int) -> Tensor:
    b, s, d = x.shape
    return x.view(b, s, n_heads, d // n_heads).transpose(1, 2)  # (B, H, S, hd)


def text_vision_scores(normed: Tensor, q_proj, k_proj, n_heads: int, n_kv_heads: int, layout: TokenLayout,
                       method: str = "fused", key_mask: Tensor | None = None) -> Tensor:
    """Eq. 7–9 on layer-normed hidden states (B, S, D) -> Φ (B, V) in float32.

    ``key_mask`` (B, S): text rows where it is False (prompt padding) are left out of the mean over t.
    """
    positions = layout.text_positions().to(normed.device)
    text = normed[:, positions]  # (B, T, D)
    text_mask = None if key_mask is None else key_mask[:, positions]
    vis = normed[:, layout.visual]  # (B, V, D)
    if method == "folded":
        u, shift = _folded_query(text, q_proj, k_proj, n_heads, n_kv_heads, text_mask)
        return (vis.float() @ u[..., None]).squeeze(-1) + shift
    k = _heads(k_proj(vis), n_kv_heads).float()  # (B, Hkv, V, hd)
    k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
    scale = 1.0 / math.sqrt(k.shape[-1])
    if method == "fused":
        q_bar = _heads(q_proj(_text_mean(text, text_mask)[:, None].to(text.dtype)), n_heads).float()  # (B, H, 1, hd)
        return (q_bar @ k.transpose(-1, -2)).squeeze(2).mean(dim=1) * scale
    if method == "exact":
        q = _heads(q_proj(text), n_heads).float()  # (B, H, T, hd)
        return _text_mean((q @ k.transpose(-1, -2) * scale).mean(dim=1), text_mask)  # mean over t of (B, T, V)
    raise ValueError(f"scoring method must be one of {SCORING_METHODS}, got {method!r}")


def _text_mean(text: Tensor, text_mask: Tensor | None) -> Tensor:
    """Mean over the text rows (B, T, ·) -> (B, ·) float32, over the real ones where a mask is given."""
    if text_mask is None:
        return text.float().mean(dim=1)
    w = text_mask.float()[..., None]
    return (text.float() * w).sum(dim=1) / w.sum(dim=1).clamp_min(1)


def _folded_query(text: Tensor, q_proj, k_proj, n_heads: int, n_kv_heads: int,
                  text_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """u (B, D) with Φ(v) = x̂_v·u + shift, from the layer-normed text rows (B, T, D); float32."""
    q_bar = q_proj(_text_mean(text, text_mask).to(text.dtype)).float()  # (B, H·hd)
    b, hd = q_bar.shape[0], q_bar.shape[-1] // n_heads
    # Heads sharing a K/V head (grouped-query attention) add their queries first.
    q_kv = q_bar.view(b, n_kv_heads, n_heads // n_kv_heads, hd).sum(2).reshape(b, -1)  # (B, Hkv·hd)
    scale = 1.0 / (n_heads * math.sqrt(hd))
    u = (q_kv.to(k_proj.weight.dtype) @ k_proj.weight).float() * scale  # (B, D): one mat-vec
    bias = k_proj.bias
    shift = (q_kv @ bias.float())[:, None] * scale if bias is not None else q_kv.new_zeros(b, 1)
    return u, shift


def folded_text_vision_scores(hidden: Tensor, norm: Callable[[Tensor], Tensor], weight: Tensor, eps: float,
                              q_proj, k_proj, n_heads: int, n_kv_heads: int, layout: TokenLayout,
                              key_mask: Tensor | None = None) -> Tensor:
    """Φ (B, V) from a layer's *input* (B, S, D), its RMSNorm folded in: only text rows are normalised.

    x̂_v = γ ⊙ x_v / rms(x_v), so x̂_v·u = (x_v·(γ ⊙ u)) / rms(x_v): one pass over the visual rows.

    Args:
        norm: the layer's input norm (applied to the text rows); ``weight`` γ and ``eps`` are its
            effective weight and epsilon.
    """
    positions = layout.text_positions().to(hidden.device)
    text = norm(hidden[:, positions])
    u, shift = _folded_query(text, q_proj, k_proj, n_heads, n_kv_heads, None if key_mask is None else key_mask[:, positions])
    vis = hidden[:, layout.visual].float()  # (B, V, D)
    inv_rms = torch.rsqrt(vis.pow(2).mean(-1) + eps)  # (B, V)
    return (vis @ (weight.float() * u)[..., None]).squeeze(-1) * inv_rms + shift


def layer_text_vision_scores(ctx: LayerContext, method: str = "fused") -> Tensor:
    """Φ at the layer a :class:`~vla_adp.seam.context.LayerContext` stands before."""
    proj = ctx.projections()
    if method == "folded":
        weight, eps = ctx.norm_scale()
        return folded_text_vision_scores(ctx.hidden, lambda x: ctx.decoder.normed(ctx.index, x), weight, eps,
                                         proj.q, proj.k, proj.n_heads, proj.n_kv_heads, ctx.layout, ctx.key_mask)
    return text_vision_scores(ctx.normed(), proj.q, proj.k, proj.n_heads, proj.n_kv_heads, ctx.layout, method,
                              ctx.key_mask)


def attention_received(probs: Tensor, layout: TokenLayout) -> Tensor:
    """Mean over heads and query rows of the attention each visual token receives: (B, H, R, S) -> (B, V)."""
    return probs[..., layout.visual].float().mean(dim=(1, 2))


ROW_SOURCES = ("last", "prefill")


def score_rows(layout: TokenLayout, source: str) -> Tensor:
    """Query rows whose attention ranks the visual tokens (FastV, VLA-Pruner).

    ``last``: the final token (FastV); in OpenVLA-OFT that is the </s> stop token.
    ``prefill``: every row before the action slots (BOS, visual, proprio, prompt), as VLA-Pruner's
    OpenVLA-OFT fork averages them.
    """
    if source == "last":
        return torch.tensor([layout.last])
    if source == "prefill":
        return torch.arange(layout.action.start)
    raise ValueError(f"attention source must be one of {ROW_SOURCES}, got {source!r}")


def layer_attention_scores(ctx: LayerContext, rows: Tensor) -> Tensor:
    """Attention received by each visual token at the layer ``ctx`` stands before: (B, V), float32.

    Softmax(q·kᵀ/√d) with RoPE for ``rows`` only (the layer itself keeps SDPA), mean over heads and rows.
    """
    return attention_received(ctx.attention_probs(rows), ctx.layout)


def participation_ratio(phi: Tensor) -> Tensor:
    """Paper Eq. 26: PR = 1 / Σ p_i², p = Φ / ΣΦ (Φ shifted to be non-negative)."""
    p = _distribution(phi)
    return 1.0 / p.pow(2).sum(-1)


def entropy(phi: Tensor) -> Tensor:
    """Paper Eq. 26: H(p) = −Σ p_i log p_i, p = Φ / ΣΦ (Φ shifted to be non-negative)."""
    p = _distribution(phi)
    return -(p * p.clamp_min(1e-30).log()).sum(-1)


def _distribution(phi: Tensor) -> Tensor:
    # Φ is a raw q·k logit and can be negative; the paper normalises Φ directly, which needs Φ ≥ 0.
    # Shift by the minimum so the least relevant token gets mass 0 (documented deviation).
    # A constant Φ carries no ranking: treat it as uniform (PR = V, H = log V) rather than 0/0.
    phi = phi.float()
    phi = phi - phi.min(dim=-1, keepdim=True).values
    total = phi.sum(-1, keepdim=True)
    uniform = torch.full_like(phi, 1.0 / phi.shape[-1])
    return torch.where(total > 0, phi / total.clamp_min(1e-30), uniform)
