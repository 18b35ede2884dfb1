"""Analytic FLOPs of OpenVLA's cached decoding (the prefill is :func:`vla_adp.cost.flops.llm_flops`).

A decode step runs one token through every layer: the projections and the MLP as one row of Eq. 19 of
the seed paper (8·D² + 6·D·M), and attention of that row over the ``c_ℓ + t`` keys layer ℓ holds (the
``2·S²·D`` term with one query row: 2·(c_ℓ + t)·D in the paper's convention, twice that in the
consistent one). Step t = 1 .. T-1 feeds the t-th generated token (the first comes from the prefill's
last row); pruning shortens ``c_ℓ``, so decoding gets cheaper too, in the layers after the cut.
"""

from __future__ import annotations

from vla_adp.seam.flops import CONVENTIONS
from vla_adp.model.config import LlamaArgs


def decode_flops(args: LlamaArgs, cache_lens: list[int], n_tokens: int, convention: str = "paper") -> float:
    """FLOPs of generating tokens 2..``n_tokens`` when layer ℓ cached ``cache_lens[ℓ]`` prefill keys."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if len(cache_lens) != args.n_layers:
        raise ValueError(f"need one cache length per layer ({args.n_layers}), got {len(cache_lens)}")
    d, m = args.dim, args.ffn_dim
    per_key = 2 if convention == "paper" else 4
    total = 0.0
    for t in range(1, n_tokens):
        for c in cache_lens:
            total += per_key * (c + t) * d + 8 * d * d + 6 * d * m
    return total
