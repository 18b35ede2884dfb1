"""Analytic FLOPs of ADP on OpenVLA-OFT (seed paper §4.3, Eq. 20–25; Tables 5–9).

Per layer at sequence length S, Eq. 19, in the ``paper`` or ``consistent`` convention:
:func:`vla_adp.seam.flops.layer_flops` (the decoder arithmetic lives beside the decoder description).

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

from vla_adp.model.config import openvla_7b_args
from vla_adp.seam.decoder import DecoderShape
from vla_adp.seam.flops import LAYER_MODES, llm_flops, scoring_flops
from vla_adp.seam.layout import TokenLayout


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


def adp_flops(shape: DecoderShape, seq_len: int, pruned_len: int, layer: int, n_text: int, n_visual: int,
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
    if mode not in LAYER_MODES:
        raise ValueError(f"mode must be one of {LAYER_MODES}, got {mode!r}")
    if not 0 <= layer < shape.n_layers:
        raise ValueError(f"scoring layer must be in [0, {shape.n_layers - 1}], got {layer!r}")
    if not 1 <= pruned_len <= seq_len:
        raise ValueError(f"pruned length must be in [1, {seq_len}], got {pruned_len!r}")
    f_score = scoring_flops(shape, n_text, n_visual, method)
    h = shape.n_layers
    if mode == "probe":
        probe = llm_flops(shape, [seq_len] * layer + [0] * (h - layer), convention)
        return ADPCost(probe + f_score, llm_flops(shape, [pruned_len] * h, convention))
    return ADPCost(f_score, llm_flops(shape, [seq_len] * layer + [pruned_len] * (h - layer), convention))


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
    return openvla_7b_args().token_layout(text_tokens)


def pruned_length(layout: TokenLayout, kept: int) -> int:
    """S′ of Eq. 21: the layout's length with ``kept`` of its visual tokens."""
    if not 0 <= kept <= layout.n_visual:
        raise ValueError(f"kept visual tokens must be in [0, {layout.n_visual}], got {kept!r}")
    return layout.length - layout.n_visual + kept
