"""SparseVLM (Zhang et al., ICML 2025, arXiv 2410.04417; Gumpest/SparseVLMs).

Text-guided, progressive visual-token sparsification with token recycling, transferred from LLaVA
(one image, causal decoder) to OpenVLA-OFT (several cameras, bidirectional decoder):

    raters   = prompt tokens t with  mean_v softmax_t(e_v · e_t) > its mean over t          (embeddings)
    at each sparsification layer ℓ ∈ {2, 6, 15}, after layer ℓ has run on the current tokens:
    s(v)     = mean_{t ∈ raters} mean_h A⁽ℓ⁾_{t,v}
    k_ℓ      = keep count (see ``count``), at most V_ℓ − 1
    keep     = Top-k_ℓ(s), in position order
    recycle  = top 30 % (+1) of the deleted by s, clustered (DPC-kNN) into ⌊m/10⌋+1 tokens that
               are the mean of their members; they join the visual tokens
    cut before layer ℓ+1 (the kept and recycled tokens continue; recycled ones compete later)

Reference code (``llava/model/language_model/modelling_sparse_llama.py``, ``LlamaDynamicvitModel.forward``;
``score.py`` ``attn_postprocess_topk``; ``utils.py`` ``cluster_and_merge``): raters from the decoder
input embeddings of every token after the image; the pruning layer itself runs on all tokens and
the cut applies to its output; recycled tokens are placed right after the kept visual tokens; the
positions are renumbered 0..L'−1 (``position_ids[:, :L']``).

KeepSet count (``count``):
* ``schedule`` (default): ρ is the *layer-averaged* share of visual tokens, the convention of the
  release's budgets (192 / 128 / 64 "equal tokens" of 576: ``score.py``'s per-layer lists, e.g.
  300 / 200 / 110 at layers 2 / 6 / 15, average over the 32 layers ≈ 192). Stage s keeps
  round(g^(s+1)·V) with the one g for which the layer average of the selected counts is ρ (the
  release's lists are close to geometric: 0.52 / 0.35 / 0.19 of 576; g = 0.55 gives 0.55 / 0.30 /
  0.17). Recycled tokens come on top (≈ 3 % of the deleted ones).
* ``rank`` (the paper's rank-based "sparsification level adaptation"; the first (v1.0) release's
  ``attn_postprocess_rank``, kept in forks of the repository such as hyiii0204/FlashVLMs): k = ⌊λ·rank(P) + β⌋ with
  P the (raters × visual) attention of that layer; λ = ``rank_scale``, β = ``rank_bias`` (that
  release's README runs 192 tokens with scale 13.5, bias 0); no sparsification where rank(P) equals
  the visual count. ``keep_ratio`` has no effect there; ``end()`` reports the achieved ratio.

Transfer to OpenVLA-OFT and deviations:
* Rater pool: the prompt tokens (incl. '▁'); the reference's "every token after the image" would
  here also contain the proprio token, the 56 all-zero action slots and </s>.
* Cameras: one global top-k over all visual tokens (the literal single-image rule); a recycled
  token belongs to the camera of its cluster centre and sits after that camera's kept tokens.
* DPC-kNN without the reference's 1e-6 random density jitter: density ties go to the lower index
  (deterministic, so a reset episode repeats exactly).
* Attention weights for the rater rows of the three layers only (``LayerContext.attention_probs``);
  the reference runs its eager, policy-masked attention in every layer.
* ``positions``: ``contiguous`` (the v1.0 release, default) or ``original`` (the release's 2.0
  variant keeps position ids; recycled tokens take their centre's position).
* ``scoring_flops``: the rater rows' attention at each layer, the rater similarity (2·V·T·D) and the
  clustering distances (3·m²·D per stage).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vla_adp.seam.flops import attention_rows_flops
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.keep import POSITION_MODES, KeepSet

COUNTS = ("schedule", "rank")
RECYCLE_SHARE = 0.3  # top 30 % of the deleted tokens are recycled (+1)
CLUSTER_SIZE = 10  # ⌊m/10⌋ + 1 clusters


# -- pure math -------------------------------------------------------------------------------------
def select_raters(visual: Tensor, text: Tensor) -> Tensor:
    """Rater selection (the release's comment: "Select Text Raters, from SparseVLM 3.2"): (V, D) visual and (T, D) text embeddings -> (T,) bool, text tokens rated above the mean.

    Relevance of text token t: mean over visual tokens v of softmax over t of e_v·e_t (no scaling).
    """
    relevance = (visual.float() @ text.float().T).softmax(dim=1).mean(dim=0)
    return relevance > relevance.mean()


def rater_scores(probs: Tensor, visual: slice) -> Tensor:
    """Rater scores: (H, R, S) attention of the rater rows -> (V,) mean over heads and raters of what each
    visual token receives, and the (R, V) head-mean matrix P whose rank the ``rank`` count reads."""
    p = probs.float().mean(dim=0)[:, visual]
    return p.mean(dim=0), p


def rank_count(p: Tensor, scale: float, bias: float) -> int | None:
    """The rank count: kept ⌊scale·rank(P) + bias⌋ (at most V − 1); ``None`` when rank(P) = V (no cut)."""
    n, rank = p.shape[1], int(torch.linalg.matrix_rank(p.float()))
    if rank == n:
        return None
    return max(1, min(int(rank * scale + bias), n - 1))


def schedule_factor(cuts: list[int], n_layers: int, ratio: float) -> float:
    """g with (Σ_layers kept share) / n_layers = ρ, stage s keeping g^(s+1) from layer ``cuts[s]`` on."""
    bounds = [*cuts, n_layers]

    def average(g: float) -> float:
        full = cuts[0]
        return (full + sum((bounds[s + 1] - bounds[s]) * g ** (s + 1) for s in range(len(cuts)))) / n_layers

    least = cuts[0] / n_layers
    if ratio <= least:
        raise ValueError(f"SparseVLM keeps every visual token before layer {cuts[0]}, so its layer-averaged keep "
                         f"ratio cannot be {ratio} <= {least:.3f} on {n_layers} layers; raise keep_ratio or move "
                         "the first sparsification layer earlier")
    lo, hi = 0.0, 1.0
    for _ in range(60):  # bisection: average() increases with g
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if average(mid) < ratio else (lo, mid)
    return (lo + hi) / 2


def density_peak_clusters(x: Tensor, n_clusters: int) -> tuple[Tensor, Tensor]:
    """DPC-kNN (the reference's ``cluster_and_merge``): (N, C) -> (centres (K,), assignment (N,) in 0..K-1).

    distance d_ij = ‖x_i − x_j‖ / √C; density ρ_i = exp(−mean of d² to its K nearest (itself incl.));
    δ_i = distance to the nearest denser token (the largest distance for the densest); centres =
    top-K of ρ·δ; every token joins its nearest centre, each centre itself. Density ties: lower index
    counts as denser.
    """
    n, c = x.shape
    d = torch.cdist(x.float(), x.float()) / math.sqrt(c)
    density = (-(d.topk(n_clusters, dim=1, largest=False).values ** 2).mean(dim=1)).exp()
    index = torch.arange(n, device=x.device)
    denser = (density[None, :] > density[:, None]) | ((density[None, :] == density[:, None]) & (index[None] < index[:, None]))
    delta = torch.where(denser, d, d.max()).min(dim=1).values
    centres = (delta * density).topk(n_clusters).indices
    assign = d[centres].argmin(dim=0)
    assign[centres] = torch.arange(n_clusters, device=x.device)
    return centres, assign


def merge_clusters(x: Tensor, assign: Tensor, n_clusters: int) -> Tensor:
    """Mean of each cluster's members: (N, C) -> (K, C)."""
    total = x.new_zeros(n_clusters, x.shape[1]).index_add_(0, assign, x)
    count = torch.bincount(assign, minlength=n_clusters).to(x.dtype)
    return total / count[:, None]


def recycle_count(n_deleted: int) -> tuple[int, int]:
    """(tokens recycled m = ⌊0.3·n⌋ + 1, clusters ⌊m/10⌋ + 1); (0, 0) when nothing was deleted."""
    if n_deleted == 0:
        return 0, 0
    m = min(n_deleted, int(n_deleted * RECYCLE_SHARE) + 1)
    return m, min(m, m // CLUSTER_SIZE + 1)


# -- config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SparseVLMConfig:
    """SparseVLM settings.

    Args:
        keep_ratio: ρ, the layer-averaged share of visual tokens (``count="schedule"``); 1.0 = unpruned.
        layers: sparsification layers ℓ (scored with layer ℓ's attention, cut before ℓ + 1).
        count: ``schedule`` (ρ-driven geometric stages) or ``rank`` (⌊λ·rank(P) + β⌋, the paper's rank rule).
        rank_scale, rank_bias: λ and β of the rank count.
        recycle: recycle deleted tokens (token recycling); False = plain deletion.
        positions: ``contiguous`` (v1.0 release) or ``original`` position ids after each cut.
    """

    keep_ratio: float = 0.5
    layers: tuple[int, ...] = (2, 6, 15)
    count: str = "schedule"
    rank_scale: float = 13.5
    rank_bias: float = 0.0
    recycle: bool = True
    positions: str = "contiguous"

    def __post_init__(self) -> None:
        if not isinstance(self.keep_ratio, (int, float)) or not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"SparseVLMConfig.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        layers = self.layers
        if (not isinstance(layers, (tuple, list)) or not layers
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
                or list(layers) != sorted(set(layers))):
            raise ValueError(f"SparseVLMConfig.layers must be increasing ints >= 0, got {layers!r}")
        object.__setattr__(self, "layers", tuple(layers))
        if self.count not in COUNTS:
            raise ValueError(f"SparseVLMConfig.count must be one of {COUNTS}, got {self.count!r}")
        if not isinstance(self.rank_scale, (int, float)) or self.rank_scale <= 0:
            raise ValueError(f"SparseVLMConfig.rank_scale must be > 0, got {self.rank_scale!r}")
        if not isinstance(self.rank_bias, (int, float)):
            raise ValueError(f"SparseVLMConfig.rank_bias must be a number, got {self.rank_bias!r}")
        if self.positions not in POSITION_MODES:
            raise ValueError(f"SparseVLMConfig.positions must be one of {POSITION_MODES}, got {self.positions!r}")


# -- pruner ----------------------------------------------------------------------------------------
class SparseVLMPruner:
    """SparseVLM: text raters score visual tokens at layers 2/6/15, progressive cuts, deleted tokens recycled."""

    name = "sparsevlm"

    def __init__(self, config: SparseVLMConfig = SparseVLMConfig()):
        self.config = config
        self.positions = config.positions
        self.reset()

    def reset(self) -> None:
        """No state carries over between queries; a new episode starts the same."""
        self._clear_query()

    def _clear_query(self) -> None:
        self._raters: list[Tensor] = []  # per batch row: rater offsets within the prompt
        self._scores = self._p = None
        self._factor: float | None = None
        self._stages: list[dict[str, int]] = []
        self._n_visual = 0
        self._flops = 0.0

    def begin(self, query: Query) -> frozenset[int]:
        self._clear_query()
        if self.config.count == "schedule" and self.config.keep_ratio >= 1.0:
            return frozenset()
        return frozenset({0, *self.config.layers, *(layer + 1 for layer in self.config.layers)})

    def at_layer(self, ctx: LayerContext) -> KeepSet | None:
        if ctx.index == 0:
            self._pick_raters(ctx)
        keep = self._cut(ctx) if ctx.index - 1 in self.config.layers else None
        if ctx.index in self.config.layers:  # a stage right after another scores the sequence it just cut
            self._score(ctx if keep is None else ctx.after_cut(keep))
        return keep

    def _pick_raters(self, ctx: LayerContext) -> None:
        layout, n = ctx.layout, ctx.shape.n_layers
        last = self.config.layers[-1]
        if last + 1 >= n:
            raise ValueError(f"SparseVLM cuts before layer {last + 1} (after its last layer {last}), but this decoder "
                             f"has layers 0..{n - 1}; set layers below {n - 1}")
        self._n_visual = layout.n_visual
        if self.config.count == "schedule":
            self._factor = schedule_factor([i + 1 for i in self.config.layers], n, self.config.keep_ratio)
        vis, text = ctx.hidden[:, layout.visual], ctx.hidden[:, layout.prompt]
        self._raters = [select_raters(vis[b], text[b]).nonzero().flatten() for b in range(ctx.hidden.shape[0])]
        self._flops += 2.0 * layout.n_visual * layout.n_prompt * ctx.hidden.shape[-1]

    def _score(self, ctx: LayerContext) -> None:
        start = ctx.layout.prompt.start
        scores, mats = [], []
        for b, offsets in enumerate(self._raters):
            rows = offsets + start
            row_ctx = ctx if ctx.hidden.shape[0] == 1 else _row(ctx, b)
            s, p = rater_scores(row_ctx.attention_probs(rows)[0], ctx.layout.visual)
            scores.append(s)
            mats.append(p)
            self._flops += attention_rows_flops(ctx.shape, len(rows), ctx.layout.length)
        self._scores, self._p = scores, mats

    def _cut(self, ctx: LayerContext) -> KeepSet:
        layout, cfg = ctx.layout, self.config
        stage = cfg.layers.index(ctx.index - 1)
        picks, tokens, views = [], [], None
        for b in range(ctx.hidden.shape[0]):
            k = self._keep_count(stage, layout.n_visual, self._p[b])
            visual, states, row_views = self._row_keep(ctx.hidden[b, layout.visual], self._scores[b], k,
                                                       layout.views)
            if views is not None and row_views != views:
                raise ValueError(f"SparseVLM batch rows kept different per-camera counts {views} and {row_views}; "
                                 "run batch 1")
            picks.append(visual)
            tokens.append(states)
            views = row_views
        self._stages.append({"layer": ctx.index - 1, "visual_in": layout.n_visual, "kept": int(k),
                             "recycled": sum(views) - int(k)})
        return KeepSet(torch.stack(picks), views, torch.stack(tokens), positions=self.positions)

    def _keep_count(self, stage: int, n_visual: int, p: Tensor) -> int:
        if self.config.count == "rank":
            k = rank_count(p, self.config.rank_scale, self.config.rank_bias)
            return n_visual if k is None else k
        k = round(self._factor ** (stage + 1) * self._n_visual)
        return max(1, min(k, n_visual - 1))

    def _row_keep(self, hidden: Tensor, scores: Tensor, k: int, views: tuple[int, ...]):
        """One batch row: (visual indices (K,), states (K, D), per-camera counts) of kept + recycled."""
        n = hidden.shape[0]
        kept = scores.topk(k).indices.sort().values
        camera = torch.repeat_interleave(torch.arange(len(views)), torch.tensor(views)).to(hidden.device)
        merged_index = torch.zeros(0, dtype=torch.long, device=hidden.device)
        merged = hidden.new_zeros(0, hidden.shape[1])
        deleted = torch.ones(n, dtype=torch.bool, device=hidden.device)
        deleted[kept] = False
        deleted = deleted.nonzero().flatten()
        m, clusters = recycle_count(len(deleted)) if self.config.recycle else (0, 0)
        if m:
            candidates = deleted[scores[deleted].topk(m).indices]
            centres, assign = density_peak_clusters(hidden[candidates], clusters)
            self._flops += 3.0 * m * m * hidden.shape[1]
            merged_index = candidates[centres]
            merged = merge_clusters(hidden[candidates].float(), assign, clusters).to(hidden.dtype)
        index, states, counts = [], [], []
        for c in range(len(views)):
            own = kept[camera[kept] == c]
            mine = (camera[merged_index] == c).nonzero().flatten()
            index += [own, merged_index[mine]]
            states += [hidden[own], merged[mine]]
            counts.append(len(own) + len(mine))
        return torch.cat(index), torch.cat(states), tuple(counts)

    def end(self, outcome: QueryOutcome) -> dict[str, Any]:
        n = self._n_visual
        final = outcome.layout.n_visual if self._stages else n
        info = {"keep_ratio": self.config.keep_ratio if self.config.count == "schedule" else None,
                "keep_ratio_achieved": final / n if n else None, "sparsevlm_stages": list(self._stages),
                "sparsevlm_raters": [len(r) for r in self._raters], "scoring_flops": self._flops}
        self._clear_query()
        return info


def _row(ctx: LayerContext, b: int) -> LayerContext:
    return dataclasses.replace(ctx, hidden=ctx.hidden[b:b + 1], position_ids=ctx.position_ids[b:b + 1],
                               visual=ctx.visual[b:b + 1])


PRUNER = SparseVLMPruner
CONFIG = SparseVLMConfig
