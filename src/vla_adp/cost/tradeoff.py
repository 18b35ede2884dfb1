"""The computational trade-off tables of the seed paper (Appendix, Tables 5–9).

One table per keep ratio ρ; columns baseline, ADP(ℓ) for each scoring layer ℓ; rows Keep Ratio,
Scoring Layer, Seq. Len. (Eq. 21), Vis. Tokens (kept), Scoring FLOPs, LLM FLOPs, Total FLOPs,
Expected FLOPs (Eq. 24 per forward) and Speedup (F_base / E), from :mod:`vla_adp.cost.flops`.

The defaults reproduce the tables: paper convention, probe scoring, γ = 0.44, k = ceil(ρ·512), a
32-token prompt (S = 603), and ``sums="exact"``. Checked against every printed entry
(tests/test_flops.py), the tables add *unrounded* components: exact sums miss 1 of their 30 totals
(Table 7, ADP(0): 4.55 = 4.53 + 0.02, where 4.526 + 0.018 = 4.544), adding the rounded components
(``sums="rounded"``) misses 5 (e.g. Table 6, ADP(4): 1.01 + 3.86 = 4.87, printed 4.86 = 4.863).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vla_adp.cost.flops import adp_flops, expected_flops, libero_layout, pruned_length, speedup
from vla_adp.model.config import LlamaArgs
from vla_adp.seam.decoder import DecoderShape
from vla_adp.seam.flops import llm_flops
from vla_adp.seam.budget import keep_count

SUMS = ("exact", "rounded")
TERA = 1e12

# (label, Column attribute, format) in the paper's row order.
ROWS = (
    ("Keep Ratio", "keep_ratio", "{:.1f}"),
    ("Scoring Layer", "layer", "{}"),
    ("Seq. Len.", "seq_len", "{}"),
    ("Vis. Tokens (kept)", "kept", "{}"),
    ("Scoring FLOPs (T)", "scoring_t", "{:.2f}"),
    ("LLM FLOPs (T)", "llm_t", "{:.2f}"),
    ("Total FLOPs (T)", "total_t", "{:.2f}"),
    ("Expected FLOPs (T)", "expected_t", "{:.2f}"),
    ("Speedup (Orig/Exp.)", "speedup", "{:.2f}"),
)


@dataclass(frozen=True)
class Column:
    """One column of a trade-off table; FLOPs in TFLOPs, unrounded (``sums="rounded"`` aside)."""

    name: str
    keep_ratio: float
    layer: int | None
    seq_len: int
    kept: int
    scoring_t: float
    llm_t: float
    total_t: float
    expected_t: float
    speedup: float

    def to_dict(self) -> dict:
        return asdict(self)


def _settle(name: str, keep_ratio: float, layer: int | None, seq_len: int, kept: int, scoring: float, llm: float,
            base: float, gamma: float, sums: str, pruned: bool) -> Column:
    """Total, expected and speedup from the components (all in TFLOPs), summed as ``sums`` says."""
    if sums == "rounded":  # add the two-decimal components, as a reader of the printed table would
        scoring, llm, base = round(scoring, 2), round(llm, 2), round(base, 2)
    total = scoring + llm
    expected = expected_flops(total, base, gamma) if pruned else base
    return Column(name, keep_ratio, layer, seq_len, kept, scoring, llm, total, expected, speedup(base, expected))


def trade_off_table(keep_ratio: float, layers: list[int], gamma: float = 0.44, rounding: str = "ceil",
                    convention: str = "paper", mode: str = "probe", text_tokens: int = 32,
                    sums: str = "exact", shape: DecoderShape | None = None) -> list[Column]:
    """One of Tables 5–9: the baseline column, then ADP(ℓ) for each ℓ in ``layers``.

    Args:
        keep_ratio: ρ; k = r(ρ·512) with ``rounding`` (``ceil`` reproduces the tables).
        layers: scoring layers ℓ.
        gamma: share of pruned windows γ (0.44 in the paper, or :func:`~vla_adp.cost.flops.gamma_from_records`).
        convention / mode: see :mod:`vla_adp.cost.flops`.
        text_tokens: prompt length; it is also the paper's L_txt of Eq. 22.
        sums: ``exact`` (default, reproduces the tables) or ``rounded`` (add two-decimal components).
        shape: the decoder (default: Llama-2 7B).
    """
    if sums not in SUMS:
        raise ValueError(f"sums must be one of {SUMS}, got {sums!r}")
    shape = shape or LlamaArgs().shape
    layout = libero_layout(text_tokens)
    s = layout.length
    kept = keep_count(layout.n_visual, keep_ratio, rounding)
    s_pruned = pruned_length(layout, kept)
    base = llm_flops(shape, [s] * shape.n_layers, convention) / TERA
    cols = [_settle("baseline", 1.0, None, s, layout.n_visual, 0.0, base, base, gamma, sums, pruned=False)]
    for layer in layers:
        cost = adp_flops(shape, s, s_pruned, layer, text_tokens, layout.n_visual, mode, convention)
        cols.append(_settle(f"ADP ({layer})", keep_ratio, layer, s_pruned, kept, cost.scoring / TERA,
                            cost.llm / TERA, base, gamma, sums, pruned=True))
    return cols


def format_table(cols: list[Column], title: str = "") -> str:
    """The paper's layout: one row per quantity, one column per configuration."""
    width = max(9, *(len(c.name) + 1 for c in cols))
    lines = [title] if title else []
    lines.append(f"{'Item':<21}" + "".join(f"{c.name:>{width}}" for c in cols))
    for label, attr, fmt in ROWS:
        cells = ["–" if getattr(c, attr) is None else fmt.format(getattr(c, attr)) for c in cols]
        lines.append(f"{label:<21}" + "".join(f"{x:>{width}}" for x in cells))
    return "\n".join(lines)
