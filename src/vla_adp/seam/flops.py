"""Analytic FLOPs of a decoder described by a :class:`~vla_adp.seam.decoder.DecoderShape` (seed paper
§4.3, Eq. 19–22), and of the scorers the pruners run (pure arithmetic, no model).

Per layer at sequence length S (D hidden, M MLP width), Eq. 19:

* ``paper``:      F(S) = 2·S²·D + 8·S·D² + 6·S·D·M   (what the paper's tables use; its Eq. 19 prints
  4SD², but 8SD² reproduces the tables — Q, K, V, O projections at 2 FLOPs per MAC)
* ``consistent``: F(S) = 4·S²·D + 8·S·D² + 6·S·D·M   (every matmul at 2 FLOPs per MAC: QKᵀ and AV
  are 2S²D each; equals a FlopCounterMode count with eager attention)

Norms, RoPE, softmax and the SwiGLU product are left out in both (FlopCounterMode counts only matmuls).
The ADP cost tables (Eq. 23–25) built on these are :mod:`vla_adp.cost.flops`.
"""

from __future__ import annotations

from vla_adp.seam.decoder import DecoderShape
from vla_adp.seam.layout import TokenLayout

CONVENTIONS = ("paper", "consistent")
LAYER_MODES = ("inline", "probe")  # ADP: score inside the one pass, or in an extra probe pass
SCORING_METHODS = ("exact", "fused", "folded")


def layer_flops(s: int, d: int, m: int, convention: str = "paper") -> float:
    """Eq. 19: FLOPs of one decoder layer at ``s`` tokens (see the module docstring for conventions)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    attn = (2 if convention == "paper" else 4) * s * s * d
    return attn + 8 * s * d * d + 6 * s * d * m


def llm_flops(shape: DecoderShape, seq_lens: list[int], convention: str = "paper") -> float:
    """FLOPs of the decoder when layer i runs at ``seq_lens[i]`` tokens (Eq. 20 when all are S)."""
    if len(seq_lens) != shape.n_layers:
        raise ValueError(f"need one sequence length per layer ({shape.n_layers}), got {len(seq_lens)}")
    return sum(layer_flops(s, shape.dim, shape.ffn_dim, convention) for s in seq_lens)


def scoring_flops(shape: DecoderShape, n_text: int, n_visual: int, method: str = "exact") -> float:
    """Cost of the text→vision scores at one layer (Eq. 22), matmuls only.

    ``exact`` is Eq. 22, F_score = 2·L_txt·D² + 2·L_vis·D² + 2·N_h·L_txt·L_vis·d, with the K
    projection at its grouped-query width (= D for Llama-2): q for every text token, k for every
    visual token, then the (N_h, L_txt, L_vis) score matrix. It counts 2 FLOPs per multiply-accumulate
    throughout, i.e. the ``consistent`` convention (RMSNorm and the means are left out).

    ``fused`` is what :func:`vla_adp.pruning.scoring.text_vision_scores` does by default: Φ is linear in
    q, so it averages the text states first and projects one vector,
    2·D² + 2·L_vis·D² + 2·N_h·L_vis·d — the L_txt-fold terms vanish (at LIBERO scale 0.0184 → 0.0172 T:
    the K projection of the visual tokens dominates either way).

    ``folded`` also folds W_K into that one vector (u = W_Kᵀ·q̄, a second D-wide mat-vec) and takes
    Φ as one V×D mat-vec: 2·D·N_h·d + 2·N_kv·d·D + 2·L_vis·D (the per-token rms it needs is a norm).

    Args:
        n_text: text tokens used as queries (the paper's L_txt; the reference also scores with BOS
            and </s>, i.e. n_prompt + 2).
        n_visual: visual tokens scored (L_vis).
    """
    if method not in SCORING_METHODS:
        raise ValueError(f"scoring method must be one of {SCORING_METHODS}, got {method!r}")
    if n_text < 1 or n_visual < 0:
        raise ValueError(f"need n_text >= 1 and n_visual >= 0, got n_text={n_text!r}, n_visual={n_visual!r}")
    d, hd = shape.dim, shape.head_dim
    if method == "folded":
        return 2 * d * shape.n_heads * hd + 2 * shape.n_kv_heads * hd * d + 2 * n_visual * d
    rows = 1 if method == "fused" else n_text
    q = 2 * rows * d * shape.n_heads * hd
    k = 2 * n_visual * d * shape.n_kv_heads * hd
    return q + k + 2 * shape.n_heads * rows * n_visual * hd


def attention_rows_flops(shape: DecoderShape, n_rows: int, seq_len: int) -> float:
    """Cost of recomputing one layer's attention weights for ``n_rows`` query rows over ``seq_len`` keys.

    What the FastV / VLA-Pruner scoring hooks add next to the layer's own SDPA: q for the rows, k for
    every key, the (N_h, R, S) logits; 2 FLOPs per MAC as Eq. 22 (norm, RoPE and softmax left out).
    """
    d, hd = shape.dim, shape.head_dim
    q, k = 2 * n_rows * d * shape.n_heads * hd, 2 * seq_len * d * shape.n_kv_heads * hd
    return q + k + 2 * shape.n_heads * n_rows * seq_len * hd


def lightvla_flops(n_visual: int, n_task: int, dim: int, training: bool = False) -> float:
    """LightVLA's parameter-free scorer: P̂T̂ᵀ and softmax·T̂ (2·V·T·D each), the V×V score Q·P̂ᵀ
    (2·V²·D) and, in training, the straight-through product H·P (another 2·V²·D)."""
    return 2.0 * n_visual * dim * (2 * n_task + n_visual * (2 if training else 1))


def query_scoring_flops(shape: DecoderShape, layout: TokenLayout, layer: int, mode: str = "inline",
                        method: str = "fused", convention: str = "paper", probe_layers: int | None = None) -> float:
    """Scoring FLOPs of one pruned query as a pruner runs it (for its per-query ``info``).

    The scorer (Eq. 22, or the fused form) on this query's scoring text (BOS, prompt incl. '▁',
    </s>) and visual tokens; in ``probe`` mode plus the extra pass, which the reference runs without
    the proprio token (``layout.length − n_proprio`` tokens).

    Args:
        probe_layers: layers the probe pass runs (default ℓ, as the tables assume; the reference's HF
            forward with ``output_hidden_states`` runs all H).
    """
    if mode not in LAYER_MODES:
        raise ValueError(f"mode must be one of {LAYER_MODES}, got {mode!r}")
    f_score = scoring_flops(shape, len(layout.text_positions()), layout.n_visual, method)
    if mode == "inline":
        return f_score
    n = layer if probe_layers is None else probe_layers
    if not 0 <= n <= shape.n_layers:
        raise ValueError(f"probe layers must be in [0, {shape.n_layers}], got {n!r}")
    s = layout.length - layout.n_proprio
    return f_score + llm_flops(shape, [s] * n + [0] * (shape.n_layers - n), convention)
