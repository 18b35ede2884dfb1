"""VLA-Pruner (Liu et al., arXiv 2511.16449; MINT-SJTU/VLA-Pruner, OpenVLA-OFT fork @3d156ee).

Dual-level importance with temporal smoothing, then max-relevance / min-redundancy selection. Per
camera c with budget k_c = round(ρ·n_c) (n_c = 256 in LIBERO):

    s_sem(v) = mean_h mean_{r < action_start} A⁽ᴷ⁾_{h,r,v}            semantic score, layer K = 3
    a_t(v)   = mean_h mean_{r ∈ action slots} A⁽¹⁵⁾_{h,r,v}            action score of query t,
                                                                     0 for tokens pruned at t
    s_act(v) = Σ_{i<w} γ^i a_{t-1-i}(v) / Σ_{i<w} γ^i                decayed window, newest first
    C_c      = Top-k_c(s_sem) ∪ Top-k_c(s_act)                        max-relevance pool
    keep_c   = greedy max-min cosine diversity over C_c on the projector outputs, down to k_c

Dataflow of one pruned query (one model call; hooks before layers K, K+1 and 15):

    layers 0..2 ─► hook: q·kᵀ of the prefill rows at layer 3 (s_sem) ─► layer 3 (SDPA, full)
       ─► hook: select, cut (original positions) ─► layers 4..14 ─► hook: q·kᵀ of the 56 action
       rows at layer 15 on the pruned sequence (a_t, scattered back to V positions) ─► layers 15..31

Reference behaviour (MINT-SJTU/VLA-Pruner ``src/openvla-oft``, ``modeling_llama._vlapruner_image_indices``) reproduced here: ``fastv_k=3`` with the fork's
off-by-one (attention of layer 3 itself, tokens dropped from layer 4 on); action layer 15;
window w=3, γ=0.8 in the *fixed* direction (newest 1.0, then 0.8, 0.64; the released OpenVLA code
had it reversed, issue #7); warm-up: no pruning until the window is full, i.e. the first three
queries of an episode run unpruned and only feed the history; union of both top-k per camera, then
greedy max-min cosine distance (first pick: the largest nearest-neighbour distance; then the
candidate farthest from the picked set; relevance does not enter this step; ties: lowest index);
original position ids. Side effect kept on purpose: a token pruned at query t scores 0 on the
action side at t+1, so only the semantic branch can bring it back.

Deviations:
* Attention weights are computed for the needed rows of layers 3 and 15 only (every layer keeps
  SDPA); the fork forces eager attention with ``output_attentions`` in all 32 layers.
* ``attention_source`` also offers ``last`` (the </s> row) for the semantic score; the fork always
  averages the prefill rows for VLA-Pruner (its ``fastv_attention_source`` only affects its FastV),
  while the maintainers recommend last-row scoring for the OpenVLA version (issues #10, #12).
* Cosine distances in float32 (the fork uses the model dtype, bf16).
* ``scoring_flops`` counts the recomputed attention rows of layers 3 and 15 (warm-up queries: 15
  only); the pool's cosine Gram matrix (≤ 2·(2k_c)²·D per camera, < 1 % of that) is left out.
* Batches: every row keeps its own history and selection (the fork reads batch row 0 only).
* Modes: ``vla_pruner_mode`` ``semantic``/``prefill`` keep the top-k_c of s_sem alone, ``action``
  the top-k_c of s_act alone, ``semantic_action``/``prefill_action``/``vla_pruner`` the method above
  (fork: ``_vlapruner_image_indices``); ``vla_pruner_action_horizon`` h > 0 restricts the action rows
  to the first h·7 slots. Warm-up and history do not depend on the mode.
* The fork's alternative "caching" mode (VLA-Cache machinery) is not part of this pruner:
  ``use_vla_cache: true`` is refused, its weight/schedule flags load with a warning.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from vla_adp.pruning.scoring import ROW_SOURCES, attention_received, layer_attention_scores, score_rows
from vla_adp.seam.budget import keep_count
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.flops import attention_rows_flops
from vla_adp.seam.keep import KeepSet


# -- pure math -------------------------------------------------------------------------------------
def decay_weights(n: int, decay: float) -> Tensor:
    """Weights of a window of ``n`` entries ordered oldest → newest: (γ^{n-1}, …, γ, 1) / Σ."""
    w = torch.tensor([decay**age for age in range(n)], dtype=torch.float64).flip(0)
    return (w / w.sum()).float()


def decayed_mean(history: Sequence[Tensor], decay: float) -> Tensor:
    """Decayed window average of action scores, ``history`` oldest → newest, each (B, V)."""
    w = decay_weights(len(history), decay).to(history[-1].device)
    return sum(wi * h.float() for wi, h in zip(w, history))


def max_min_diversity(features: Tensor, k: int) -> Tensor:
    """Greedy max-min cosine diversity (the fork's ``_redundancy_minization``): (N, D) -> (k,) picks.

    The first pick has the largest distance to its nearest neighbour; each later pick maximises its
    minimum distance to the picked set. Indices come in pick order; ties go to the lowest index.
    """
    n = features.shape[0]
    if n <= k:
        return torch.arange(n, device=features.device)
    unit = features.float() / features.float().norm(dim=1, keepdim=True).clamp_min(1e-6)
    dist = 1.0 - unit @ unit.T  # (N, N) cosine distance
    # Picks stay 0-d tensors so the loop never waits for the device.
    picks = [dist.topk(2, dim=0, largest=False).values[1].argmax()]
    nearest = dist[picks[0]]  # distance of every candidate to the picked set
    for _ in range(k - 1):
        picks.append(nearest.argmax())
        nearest = torch.minimum(nearest, dist[picks[-1]])
    return torch.stack(picks)


def relevance_then_diversity(semantic: Tensor, action: Tensor, features: Tensor, k: int) -> Tensor:
    """One camera, one batch row: Top-k(semantic) ∪ Top-k(action), then max-min diversity to k.

    Args:
        semantic, action: (n,) scores of the camera's tokens.
        features: (n, D) their projector outputs.
    Returns:
        (k,) kept indices within the camera, ascending.
    """
    pool = torch.cat([semantic.topk(k).indices, action.topk(k).indices]).unique(sorted=True)
    if pool.numel() > k:
        pool = pool[max_min_diversity(features[pool], k)]
    return pool.sort().values


def select_vla_pruner(semantic: Tensor | None, action: Tensor | None, features: Tensor, views: tuple[int, ...],
                      keep_ratio: float, mode: str = "semantic_action") -> KeepSet:
    """Per camera and batch row: ``semantic_action``: union of both top-k_c, diversity filter;
    ``semantic`` / ``action``: top-k_c of that score alone (the fork's single-score modes). (B, V) -> KeepSet
    (original positions, as the fork)."""
    picks, counts, start = [], [], 0
    batch = features.shape[0]
    for n in views:
        k = keep_count(n, keep_ratio)
        span = slice(start, start + n)
        if mode == "semantic_action":
            rows = [relevance_then_diversity(semantic[b, span], action[b, span], features[b, span], k)
                    for b in range(batch)]
        else:
            score = semantic if mode == "semantic" else action
            rows = [score[b, span].float().topk(k).indices.sort().values for b in range(batch)]
        picks.append(torch.stack(rows) + start)
        counts.append(k)
        start += n
    return KeepSet(torch.cat(picks, dim=1), tuple(counts), positions="original")


def scatter_visual(scores: Tensor, keep_set: KeepSet | None, n_visual: int) -> Tensor:
    """Scores of the kept visual tokens (B, K) back onto all V positions, 0 where pruned."""
    if keep_set is None:
        return scores
    full = scores.new_zeros(scores.shape[0], n_visual)
    return full.scatter(1, keep_set.visual_index.to(scores.device), scores)


# -- config ----------------------------------------------------------------------------------------
def _is_int(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def check_shared_fields(cfg) -> None:
    """The fields both VLA-Pruner variants have (this one and the OpenVLA one), errors naming the class."""
    name = type(cfg).__name__
    if not isinstance(cfg.keep_ratio, (int, float)) or not 0.0 < cfg.keep_ratio <= 1.0:
        raise ValueError(f"{name}.keep_ratio must be in (0, 1], got {cfg.keep_ratio!r}")
    if not _is_int(cfg.action_layer, 0):
        raise ValueError(f"{name}.action_layer must be an int >= 0, got {cfg.action_layer!r}")
    if not _is_int(cfg.history, 1):
        raise ValueError(f"{name}.history must be an int >= 1, got {cfg.history!r}")
    if not isinstance(cfg.decay, (int, float)) or not 0.0 < cfg.decay <= 1.0:
        raise ValueError(f"{name}.decay must be in (0, 1], got {cfg.decay!r}")
    if cfg.attention_source not in ROW_SOURCES:
        raise ValueError(f"{name}.attention_source must be one of {ROW_SOURCES}, got {cfg.attention_source!r}")
    if cfg.mode not in MODES:
        raise ValueError(f"{name}.mode must be one of {MODES}, got {cfg.mode!r}")


@dataclass(frozen=True)
class VLAPrunerConfig:
    """VLA-Pruner settings (OpenVLA-OFT fork defaults).

    Args:
        keep_ratio: ρ; each camera keeps round(ρ·n_c) (1.0 = unpruned, bit for bit).
        fastv_k: layer whose attention gives the semantic score; tokens are dropped before
            layer ``fastv_k + 1`` (the OFT fork's convention).
        action_layer: layer whose action-slot attention feeds the history (``vla_pruner_layer``).
        history: window length w; also the warm-up (queries run unpruned until it is full).
        decay: γ; weight γ^age, newest entry age 0.
        attention_source: semantic rows, ``prefill`` (fork) or ``last`` (the </s> row).
        mode: ``semantic_action`` (the method: both scores, union, diversity), ``semantic`` (top-k of
            the semantic score only) or ``action`` (top-k of the decayed action history only); the
            fork's ``vla_pruner_mode`` values map onto these (``MODE_NAMES``). Warm-up and history
            are the same in every mode.
        action_horizon: 0 = all action slots feed the action score; h > 0 = only the first h
            timesteps (h·``action_dim`` slots; the fork's ``vla_pruner_action_horizon``).
        action_dim: slots per timestep (7 in LIBERO, the fork's platform); used with the horizon.
    """

    keep_ratio: float = 0.5
    fastv_k: int = 3
    action_layer: int = 15
    history: int = 3
    decay: float = 0.8
    attention_source: str = "prefill"
    mode: str = "semantic_action"
    action_horizon: int = 0
    action_dim: int = 7

    def __post_init__(self) -> None:
        check_shared_fields(self)
        if isinstance(self.fastv_k, bool) or not isinstance(self.fastv_k, int) or self.fastv_k < 0:
            raise ValueError(f"VLAPrunerConfig.fastv_k must be an int >= 0, got {self.fastv_k!r}")
        if not isinstance(self.action_horizon, int) or self.action_horizon < 0:
            raise ValueError(f"VLAPrunerConfig.action_horizon must be an int >= 0, got {self.action_horizon!r}")
        if not isinstance(self.action_dim, int) or self.action_dim < 1:
            raise ValueError(f"VLAPrunerConfig.action_dim must be an int >= 1, got {self.action_dim!r}")

    @property
    def score_layer(self) -> int:
        return self.fastv_k

    @property
    def cut_layer(self) -> int:
        return self.fastv_k + 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAPrunerConfig":
        """Our field names or the fork's flag set (``fastv_k``, ``fastv_r`` = 1 − ρ, ``vla_pruner_layer``,
        ``vla_pruner_mode``, ``vla_pruner_action_horizon``, ``vla_pruner_av_hist_w``/``av_hist_w``,
        ``vla_pruner_av_decay``/``av_decay``; ``use_*`` method switches).

        ``use_vla_cache: true`` is refused (VLA-Cache is a different method: the `vla_cache` pruner); the
        fork's VLA-Cache-mode weights and schedule flags load with a warning that they change nothing.
        """
        ours = {f.name for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        for key, value in data.items():
            if key in REFERENCE_FIELDS:
                name, convert = REFERENCE_FIELDS[key]
                out[name] = convert(value)
            elif key in ours:
                out[key] = value
            elif key == "use_vla_cache":
                if value:
                    raise ValueError("use_vla_cache=true selects VLA-Cache (cross-step token reuse with a KV cache), "
                                     "the separate 'vla_cache' pruner here; set it to false to run VLA-Pruner")
            elif key in ("use_vla_pruner", "use_fastv"):
                continue  # selecting the method is the registry's job
            elif key == "fastv_attention_source":
                warnings.warn("fastv_attention_source does not affect VLA-Pruner in the reference fork (its semantic "
                              "score always averages the prefill rows); set attention_source to change it here")
            elif key in CACHE_MODE_FLAGS:
                warnings.warn(f"{key} only affects the fork's VLA-Cache mode; no effect on VLA-Pruner")
            else:
                raise ValueError(f"unknown or unsupported VLA-Pruner config field {key!r}={value!r}; expected one of "
                                 f"{sorted(ours | set(REFERENCE_FIELDS) | set(CACHE_MODE_FLAGS))}")
        return cls(**out)


MODES = ("semantic_action", "semantic", "action")
# The fork's vla_pruner_mode strings (modeling_llama._vlapruner_image_indices): which scores it builds.
MODE_NAMES = {"semantic_action": "semantic_action", "prefill_action": "semantic_action", "vla_pruner": "semantic_action",
              "semantic": "semantic", "prefill": "semantic", "action": "action"}


def _mode(value) -> str:
    if value not in MODE_NAMES:
        raise ValueError(f"vla_pruner_mode must be one of {sorted(MODE_NAMES)}, got {value!r} (the fork falls back "
                         "to FastV's scores for any other string: use the fastv pruner for that)")
    return MODE_NAMES[value]


def _keep_from_r(r) -> float:
    r = float(r)
    if r >= 1.0:
        raise ValueError(f"fastv_r={r!r} keeps no visual token; use fastv_r < 1")
    return min(1.0, 1.0 - r)  # fastv_r <= 0: the fork skips pruning


REFERENCE_FIELDS: dict[str, tuple[str, Any]] = {
    "fastv_r": ("keep_ratio", _keep_from_r),
    "vla_pruner_layer": ("action_layer", int),
    "vla_pruner_av_hist_w": ("history", int),
    "av_hist_w": ("history", int),
    "vla_pruner_av_decay": ("decay", float),
    "av_decay": ("decay", float),
    "vla_pruner_mode": ("mode", _mode),
    "vla_pruner_action_horizon": ("action_horizon", int),
}
# Flags of the fork's VLA-Cache-based mode (vla_pruner_utils.py): no effect on VLA-Pruner itself.
CACHE_MODE_FLAGS = ("vla_pruner_semantic_weight", "vla_pruner_action_weight", "vla_pruner_static_only",
                    "vla_pruner_use_layer_schedule")


# -- pruner ----------------------------------------------------------------------------------------
class VLAPrunerPruner:
    """VLA-Pruner: semantic ∪ decayed action top-k per camera, then max-min diversity (OFT fork)."""

    name = "vla_pruner"

    def __init__(self, config: VLAPrunerConfig = VLAPrunerConfig()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        """New episode: empty action history, so the warm-up starts again."""
        self._history: deque[Tensor] = deque(maxlen=self.config.history)
        self._clear_query()

    def _clear_query(self) -> None:
        self._pruning = False
        self._semantic = self._keep = self._current = None
        self._flops = 0.0

    def begin(self, query: Query) -> frozenset[int]:
        self._clear_query()
        cfg = self.config
        if cfg.keep_ratio >= 1.0:
            return frozenset()
        self._pruning = len(self._history) == cfg.history
        hooks = {cfg.action_layer}
        if self._pruning:
            hooks |= {cfg.cut_layer} | ({cfg.score_layer} if cfg.mode != "action" else set())
        return frozenset(hooks)

    def at_layer(self, ctx: LayerContext) -> KeepSet | None:
        keep = self._score_and_cut(ctx)
        if ctx.index == self.config.action_layer:
            self._current = self._action_scores(ctx if keep is None else ctx.after_cut(keep))
        return keep

    def _score_and_cut(self, ctx: LayerContext) -> KeepSet | None:
        """The semantic score at ``score_layer`` and the cut at ``cut_layer`` (every variant's prefix steps)."""
        cfg = self.config
        if self._pruning and ctx.index == cfg.score_layer and cfg.mode != "action":
            rows = score_rows(ctx.layout, cfg.attention_source)
            self._semantic = layer_attention_scores(ctx, rows)
            self._flops += attention_rows_flops(ctx.shape, len(rows), ctx.layout.length)
        if self._pruning and ctx.index == cfg.cut_layer:
            self._keep = self._select(ctx)
            return self._keep
        return None

    def _select(self, ctx: LayerContext) -> KeepSet:
        batch = ctx.hidden.shape[0]
        if self._history[-1].shape[0] != batch:
            raise ValueError(f"VLA-Pruner history holds batch {self._history[-1].shape[0]} but this query has "
                             f"batch {batch}; call reset() when the batch changes")
        if self._history[-1].shape[1] != ctx.layout.n_visual:
            raise ValueError(f"VLA-Pruner history covers {self._history[-1].shape[1]} image tokens but this query "
                             f"has {ctx.layout.n_visual} (a camera appeared or vanished); call reset()")
        cfg = self.config
        action = decayed_mean(self._history, cfg.decay) if cfg.mode != "semantic" else None
        return select_vla_pruner(self._semantic, action, ctx.visual, ctx.layout.views, cfg.keep_ratio, cfg.mode)

    def _action_scores(self, ctx: LayerContext) -> Tensor:
        start, stop = ctx.layout.action.start, ctx.layout.action.stop
        if self.config.action_horizon:  # the fork: min(action_end, action_start + horizon·ACTION_DIM)
            stop = min(stop, start + self.config.action_horizon * self.config.action_dim)
        rows = torch.arange(start, stop)
        kept = attention_received(ctx.attention_probs(rows), ctx.layout)  # (B, kept visual)
        self._flops += attention_rows_flops(ctx.shape, len(rows), ctx.layout.length)
        return scatter_visual(kept, self._keep, ctx.visual.shape[1])

    def end(self, outcome: QueryOutcome) -> dict[str, Any]:
        warmup = not self._pruning and self.config.keep_ratio < 1.0
        if self._current is not None:
            self._history.append(self._current.detach())
        info = {"keep_ratio": self.config.keep_ratio, "vla_pruner_warmup": warmup,
                "vla_pruner_history": len(self._history), "scoring_layer": self.config.score_layer,
                "action_layer": self.config.action_layer, "scoring_flops": self._flops}
        self._clear_query()
        return info


PRUNER = VLAPrunerPruner
CONFIG = VLAPrunerConfig
