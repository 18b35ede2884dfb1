"""Llama-2 with its causal mask and a KV cache: OpenVLA's language model, without transformers.

    prefill:  embeds (B,L,D) ──► [CausalDecoderLayer × N] ──► RMSNorm ──► lm_head ──► logits (B,L,V)
                                   │ each layer appends its keys/values to the cache
    decode:   one token (B,1,D) ──► the same layers, attending to the cache + itself ──► logits (B,1,V)

Parameter names follow HF's ``LlamaForCausalLM`` (and :class:`vla_adp.model.llm.LlamaDecoder`), so the
checkpoint keys map as for OpenVLA-OFT. The blocks are OFT's (RMSNorm, SwiGLU, rotate-half RoPE); only
attention differs: a causal mask in the prefill and a cache whose length may differ per layer, because
a pruner may shorten the sequence between layers (layers before the cut keep every key, the layers
after it only the kept ones, as FastV's cached generation does).

The class is the family's :class:`~vla_adp.seam.decoder.Decoder` (the accessors of
:class:`~vla_adp.model.llm.LayerAccess`, and ``run_layers``); :meth:`CausalAttention.probs` masks
future keys, so attention-based scorers see the weights this model really uses.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_adp.model.config import LlamaArgs
from vla_adp.model.llm import Attention, FeedForward, LayerAccess, RMSNorm, apply_rope, rope_cos_sin


class KVCache:
    """Keys and values per layer, (B, H_kv, S_ℓ, hd) each; S_ℓ may differ between layers."""

    def __init__(self, n_layers: int):
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's keys/values (B, H_kv, S, hd) to layer ``layer``; return everything cached."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def lengths(self) -> list[int]:
        return [0 if k is None else k.shape[2] for k in self.keys]


def causal_mask(n_query: int, n_key: int, device=None) -> Tensor:
    """(n_query, n_key) bool: query i (the last ``n_query`` positions) sees keys 0..n_key-n_query+i."""
    return torch.ones(n_query, n_key, dtype=torch.bool, device=device).tril(diagonal=n_key - n_query)


class CausalAttention(Attention):
    """OFT's attention module (same parameters) with a causal mask and an optional cache."""

    def __init__(self, args: LlamaArgs, index: int):
        super().__init__(args)
        self.index = index

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None = None,
                cache: KVCache | None = None) -> Tensor:
        if mask is not None:
            raise ValueError("the causal decoder takes no padding mask (OpenVLA generates one query at a time)")
        q = apply_rope(self._heads(self.q_proj(x), self.n_heads), cos, sin)
        k = apply_rope(self._heads(self.k_proj(x), self.n_kv_heads), cos, sin)
        v = self._heads(self.v_proj(x), self.n_kv_heads)
        if cache is not None:
            k, v = cache.update(self.index, k, v)
        k, v = self._expand_kv(k), self._expand_kv(v)
        n_q, n_k = q.shape[2], k.shape[2]
        if self.impl == "eager":
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            logits = logits.masked_fill(~causal_mask(n_q, n_k, x.device), float("-inf"))
            out = logits.softmax(dim=-1) @ v
        elif n_q == 1:  # one new token sees every cached key: no mask (as transformers' SDPA path)
            out = F.scaled_dot_product_attention(q, k, v)
        elif n_q == n_k:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(n_q, n_k, x.device))
        b, _, s, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))

    def probs(self, x: Tensor, cos: Tensor, sin: Tensor, rows: Tensor) -> Tensor:
        """Causal softmax weights of the query ``rows`` over the keys of ``x``: (B, H, R, S).

        Row r attends to keys 0..r only (sequence order), so a scorer sees the weights the prefill uses.
        """
        q = apply_rope(self._heads(self.q_proj(x[:, rows]), self.n_heads), cos[:, rows], sin[:, rows])
        k = self._expand_kv(apply_rope(self._heads(self.k_proj(x), self.n_kv_heads), cos, sin))
        logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.head_dim)
        future = torch.arange(x.shape[1], device=x.device)[None, :] > rows.to(x.device)[:, None]  # (R, S)
        return logits.masked_fill(future, float("-inf")).softmax(dim=-1)


class CausalDecoderLayer(nn.Module):
    def __init__(self, args: LlamaArgs, index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(args.dim, args.rms_eps)
        self.self_attn = CausalAttention(args, index)
        self.post_attention_layernorm = RMSNorm(args.dim, args.rms_eps)
        self.mlp = FeedForward(args)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None) -> Tensor:
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, cache=cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class CausalLlama(LayerAccess, nn.Module):
    """Llama-2 as ``LlamaForCausalLM`` runs it: causal, cached, with its ``lm_head``."""

    def __init__(self, args: LlamaArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(CausalDecoderLayer(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.rms_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)

    def set_attention(self, impl: str) -> None:
        """``sdpa`` (default) or ``eager`` (for FLOP counting) in every layer."""
        if impl not in ("sdpa", "eager"):
            raise ValueError(f"attention implementation must be 'sdpa' or 'eager', got {impl!r}")
        for layer in self.layers:
            layer.self_attn.impl = impl

    def rope(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        return rope_cos_sin(position_ids, self.args.head_dim, self.args.rope_theta, dtype)

    def run_layers(self, x: Tensor, position_ids: Tensor, start: int, stop: int, key_mask: Tensor | None = None,
                   cache: KVCache | None = None) -> Tensor:
        """Layers ``[start, stop)`` on x (B, S, D) at positions (B, S); with ``cache``, append to it and
        attend to what it holds. ``key_mask`` is refused (no padding in OpenVLA's generation)."""
        if key_mask is not None:
            raise ValueError("the causal decoder takes no padding mask (OpenVLA generates one query at a time)")
        cos, sin = self.rope(position_ids, x.dtype)
        for layer in self.layers[start:stop]:
            x = layer(x, cos, sin, cache)
        return x

    def logits(self, hidden: Tensor) -> Tensor:
        """Final RMSNorm and ``lm_head``: (B, S, D) -> (B, S, vocab)."""
        return self.lm_head(self.norm(hidden))

    def forward(self, x: Tensor, position_ids: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Every layer, final RMSNorm applied (= HF ``hidden_states[-1]``)."""
        if position_ids is None:
            past = 0 if cache is None else cache.lengths()[0]
            position_ids = torch.arange(past, past + x.shape[1], device=x.device).expand(x.shape[0], -1)
        return self.norm(self.run_layers(x, position_ids, 0, len(self.layers), cache=cache))
