"""Analytic FLOPs of the Llama decoder (seed paper §4.3, Eq. 19–25; Tables 5–9).

Per layer at sequence length S (D hidden, M MLP width):

* ``paper``:      F(S) = 2·S²·D + 8·S·D² + 6·S·D·M   (what the paper's tables use; its Eq. 19 prints
  4SD², but 8SD² reproduces the tables — Q, K, V, O projections at 2 FLOPs per MAC)
* ``consistent``: F(S) = 4·S²·D + 8·S·D² + 6·S·D·M   (every matmul at 2 FLOPs per MAC: QKᵀ and AV
  are 2S²D each; equals a FlopCounterMode count with eager attention)
"""

from __future__ import annotations

from vla_adp.model.config import LlamaArgs
from vla_adp.pruning.layout import TokenLayout

CONVENTIONS = ("paper", "consistent")


def layer_flops(s: int, d: int, m: int, convention: str = "paper") -> float:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    attn = (2 if convention == "paper" else 4) * s * s * d
    return attn + 8 * s * d * d + 6 * s * d * m


def llm_flops(args: LlamaArgs, seq_lens: list[int], convention: str = "paper") -> float:
    """FLOPs of the decoder when layer i runs at ``seq_lens[i]`` tokens."""
    if len(seq_lens) != args.n_layers:
        raise ValueError(f"need one sequence length per layer ({args.n_layers}), got {len(seq_lens)}")
    return sum(layer_flops(s, args.dim, args.ffn_dim, convention) for s in seq_lens)
