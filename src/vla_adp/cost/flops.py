"""Analytic FLOPs of the Llama decoder and of ADP (seed paper §4.3, Eq. 19–25; Tables 5–9).

Per layer at sequence length S (D hidden, M MLP width), Eq. 19:

* ``paper``:      F(S) = 2·S²·D + 8·S·D² + 6·S·D·M   (what the paper's tables use; its Eq. 19 prints
  4SD², but 8SD² reproduces the tables — Q, K, V, O projections at 2 FLOPs per MAC)
* ``consistent``: F(S) = 4·S²·D + 8·S·D² + 6·S·D·M   (every matmul at 2 FLOPs per MAC: QKᵀ and AV
  are 2S²D each; equals a FlopCounterMode count with eager attention)

Norms, RoPE, softmax and the SwiGLU product are left out in both (FlopCounterMode counts only matmuls).

ADP with text→vision scoring at layer ℓ (Eq. 20–23), H layers, S′ the pruned length (Eq. 21):

* ``probe`` (reference code; what Tables 5–9 assume): an extra pass through ℓ full layers to get the
  layer-ℓ hidden states, the scores (Eq. 22), then all H layers at S′:
  F_ADP = [ℓ·F(S) + F_score] + H·F(S′)   — e.g. ℓ = 2: scoring = 2·F(603) + 0.02 = 0.51 T.
* ``inline`` (ours): layers 0..ℓ−1 run once on the full sequence, the cut happens before layer ℓ:
  F_ADP = F_score + [ℓ·F(S) + (H−ℓ)·F(S′)]   — no second pass.

Per forward the gate prunes a share γ of the windows: E = γ·F_ADP + (1−γ)·F_base (Eq. 24 / T) and
the speedup is F_base / E; over T forwards E[F_episode] = T·E (Eq. 24), E[ΔF_episode] = T·γ·ΔF_ADP
(Eq. 25).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vla_adp.model.config import LlamaArgs
from vla_adp.pruning.layout import TokenLayout

CONVENTIONS = ("paper", "consistent")
MODES = ("probe", "inline")
SCORING_METHODS = ("exact", "fused", "folded")

# OFT on LIBERO: two 224-px views × 256 patches, 8-step chunks of 7-D actions, one proprio token.
LIBERO_VIEWS = (256, 256)
LIBERO_ACTION_SLOTS = 56


def layer_flops(s: int, d: int, m: int, convention: str = "paper") -> float:
    """Eq. 19: FLOPs of one decoder layer at ``s`` tokens (see the module docstring for conventions)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    attn = (2 if convention == "paper" else 4) * s * s * d
    return attn + 8 * s * d * d + 6 * s * d * m


def llm_flops(args: LlamaArgs, seq_lens: list[int], convention: str = "paper") -> float:
    """FLOPs of the decoder when layer i runs at ``seq_lens[i]`` tokens (Eq. 20 when all are S)."""
    if len(seq_lens) != args.n_layers:
        raise ValueError(f"need one sequence length per layer ({args.n_layers}), got {len(seq_lens)}")
    return sum(layer_flops(s, args.dim, args.ffn_dim, convention) for s in seq_lens)


def scoring_flops(args: LlamaArgs, n_text: int, n_visual: int, method: str = "exact") -> float:
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
    d, hd = args.dim, args.head_dim
    if method == "folded":
        return 2 * d * args.n_heads * hd + 2 * args.n_kv_heads * hd * d + 2 * n_visual * d
    rows = 1 if method == "fused" else n_text
    q = 2 * rows * d * args.n_heads * hd
    k = 2 * n_visual * d * args.n_kv_heads * hd
    return q + k + 2 * args.n_heads * rows * n_visual * hd


def attention_rows_flops(args: LlamaArgs, n_rows: int, seq_len: int) -> float:
    """Cost of recomputing one layer's attention weights for ``n_rows`` query rows over ``seq_len`` keys.

    What the FastV / VLA-Pruner scoring hooks add next to the layer's own SDPA: q for the rows, k for
    every key, the (N_h, R, S) logits; 2 FLOPs per MAC as Eq. 22 (norm, RoPE and softmax left out).
    """
    d, hd = args.dim, args.head_dim
    q, k = 2 * n_rows * d * args.n_heads * hd, 2 * seq_len * d * args.n_kv_heads * hd
    return q + k + 2 * args.n_heads * n_rows * seq_len * hd


def lightvla_flops(n_visual: int, n_task: int, dim: int, training: bool = False) -> float:
    """LightVLA's parameter-free scorer: P̂T̂ᵀ and softmax·T̂ (2·V·T·D each), the V×V score Q·P̂ᵀ
    (2·V²·D) and, in training, the straight-through product H·P (another 2·V²·D)."""
    return 2.0 * n_visual * dim * (2 * n_task + n_visual * (2 if training else 1))


@dataclass(frozen=True)
class ADPCost:
    """FLOPs of one pruned forward, split as in Tables 5–9.

    Args:
        scoring: the "Scoring FLOPs" row: Eq. 22 plus, in probe mode, the extra ℓ full layers.
        llm: the "LLM FLOPs" row: the decoder pass that produces the actions.
    """

    scoring: float
    llm: float

    @property
    def total(self) -> float:
        return self.scoring + self.llm


def adp_flops(args: LlamaArgs, seq_len: int, pruned_len: int, layer: int, n_text: int, n_visual: int,
              mode: str = "probe", convention: str = "paper", method: str = "exact") -> ADPCost:
    """F_ADP of Eq. 23 with scoring at decoder layer ``layer`` (ℓ), in ``probe`` or ``inline`` mode.

    Args:
        seq_len: unpruned length S (603 on LIBERO with a 32-token prompt).
        pruned_len: S′ of Eq. 21.
        layer: ℓ, 0 = scores from the embeddings, before the first layer.
        n_text / n_visual / method: passed to :func:`scoring_flops`.
        mode: ``probe`` (extra ℓ-layer pass, then H layers at S′) or ``inline`` (ℓ layers at S,
            H−ℓ at S′).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= layer < args.n_layers:
        raise ValueError(f"scoring layer must be in [0, {args.n_layers - 1}], got {layer!r}")
    if not 1 <= pruned_len <= seq_len:
        raise ValueError(f"pruned length must be in [1, {seq_len}], got {pruned_len!r}")
    f_score = scoring_flops(args, n_text, n_visual, method)
    h = args.n_layers
    if mode == "probe":
        probe = llm_flops(args, [seq_len] * layer + [0] * (h - layer), convention)
        return ADPCost(probe + f_score, llm_flops(args, [pruned_len] * h, convention))
    return ADPCost(f_score, llm_flops(args, [seq_len] * layer + [pruned_len] * (h - layer), convention))


def query_scoring_flops(args: LlamaArgs, layout: TokenLayout, layer: int, mode: str = "inline",
                        method: str = "fused", convention: str = "paper", probe_layers: int | None = None) -> float:
    """Scoring FLOPs of one pruned query as a pruner runs it (for its per-query ``info``).

    The scorer (Eq. 22, or the fused form) on this query's scoring text (BOS, prompt incl. '▁',
    </s>) and visual tokens; in ``probe`` mode plus the extra pass, which the reference runs without
    the proprio token (``layout.length − n_proprio`` tokens).

    Args:
        probe_layers: layers the probe pass runs (default ℓ, as the tables assume; the reference's HF
            forward with ``output_hidden_states`` runs all H).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    f_score = scoring_flops(args, len(layout.text_positions()), layout.n_visual, method)
    if mode == "inline":
        return f_score
    n = layer if probe_layers is None else probe_layers
    if not 0 <= n <= args.n_layers:
        raise ValueError(f"probe layers must be in [0, {args.n_layers}], got {n!r}")
    s = layout.length - layout.n_proprio
    return f_score + llm_flops(args, [s] * n + [0] * (args.n_layers - n), convention)


def _check_gamma(gamma: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma (share of pruned windows) must be in [0, 1], got {gamma!r}")


def expected_flops(f_adp: float, f_base: float, gamma: float) -> float:
    """Expected FLOPs per forward, E = γ·F_ADP + (1−γ)·F_base (Eq. 24 divided by T)."""
    _check_gamma(gamma)
    return gamma * f_adp + (1.0 - gamma) * f_base


def speedup(f_base: float, expected: float) -> float:
    """The tables' "Speedup (Orig/Exp.)": F_base / E."""
    if expected <= 0:
        raise ValueError(f"expected FLOPs must be positive, got {expected!r}")
    return f_base / expected


def episode_flops(n_forwards: int, f_adp: float, f_base: float, gamma: float) -> float:
    """E[F_episode] = T·(γ·F_ADP + (1−γ)·F_base) over T forwards (Eq. 24)."""
    if n_forwards < 0:
        raise ValueError(f"number of forwards must be >= 0, got {n_forwards!r}")
    return n_forwards * expected_flops(f_adp, f_base, gamma)


def episode_savings(n_forwards: int, f_adp: float, f_base: float, gamma: float) -> float:
    """E[ΔF_episode] = T·γ·(F_base − F_ADP) (Eq. 25); negative when scoring costs more than it saves."""
    if n_forwards < 0:
        raise ValueError(f"number of forwards must be >= 0, got {n_forwards!r}")
    _check_gamma(gamma)
    return n_forwards * gamma * (f_base - f_adp)


def gamma_from_records(records: Iterable[Mapping]) -> float:
    """γ measured from a run: the share of query records whose ``pruned`` is true.

    Args:
        records: parsed JSONL log lines (:class:`~vla_adp.eval.schema.QueryRecord` dicts). Lines of
            another ``kind`` (run, episode) are skipped; a line without ``kind`` counts as a query.
    """
    n = pruned = 0
    for i, rec in enumerate(records):
        if not isinstance(rec, Mapping):
            raise ValueError(f"record {i}: expected a dict, got {type(rec).__name__}")
        if rec.get("kind", "query") != "query":
            continue
        flag = rec.get("pruned")
        if not isinstance(flag, bool):
            raise ValueError(f"record {i}: 'pruned' must be true or false, got {flag!r}")
        n += 1
        pruned += flag
    if n == 0:
        raise ValueError("no query records: cannot measure the share of pruned windows")
    return pruned / n


def libero_layout(text_tokens: int = 32) -> TokenLayout:
    """The OFT LIBERO sequence of §4.3: 1 BOS + 512 visual + 1 proprio + text + 56 action + 1 stop.

    Args:
        text_tokens: prompt length incl. the trailing '▁' (32 gives the paper's S = 603).
    """
    return TokenLayout(LIBERO_VIEWS, text_tokens, LIBERO_ACTION_SLOTS, 1)


def pruned_length(layout: TokenLayout, kept: int) -> int:
    """S′ of Eq. 21: the layout's length with ``kept`` of its visual tokens."""
    if not 0 <= kept <= layout.n_visual:
        raise ValueError(f"kept visual tokens must be in [0, {layout.n_visual}], got {kept!r}")
    return layout.length - layout.n_visual + kept
