"""VLA-Cache (Xu et al., NeurIPS 2025, arXiv 2502.02175; siyuhsu/vla-cache, OpenVLA-OFT code).

The steps below are the paper's three parts (static-token selection, task-relevance filter,
layer-adaptive reuse); they are numbered here and cite the reference code's functions (the paper's
own equation numbers were not checked for this file).

Visual tokens whose image patches did not change since the previous query are not recomputed: from
a few decoder layers on, their query rows leave the sequence and attention reads their keys/values
from the previous query's cache instead. Per query t (batch 1, one episode):

    static_c  = patches of camera c with cos(patch_t, patch_{t-1}) >= τ, the top-k most similar  step 1
    relevant_c = top-k_r visual tokens of camera c by the text→vision attention of layer 15 at t-1 step 2
    reusable  = ⋃_c sorted(static_c \\ relevant_c)             (camera 0 first, position order)   step 3
    H_ℓ       = mean_rows entropy(mean_heads A⁽ℓ⁾) at t-1;  r_ℓ = 1 − minmax(H)_ℓ, upward ×0.55  step 4
    at reuse layer ℓ ∈ {2, 6, 9, 11}: the first max(1, ⌊r_ℓ·|reusable|⌋) reusable tokens stop being
    computed (never fewer than at an earlier reuse layer); every later layer appends their cached
    keys/values (RoPE at their own positions) to the keys/values of the rows it computes.
    ("The first" in the reference's order: camera 0's tokens go before camera 1's, reproduced.)

Step 1 is ``find_static_patches`` (``experiments/robot/vla_cache_utils.py``: 14-px patches, τ = 0.996,
top 150 of 256 per camera), step 2 ``task_relevant_selection`` / ``token_attention_merge`` (top 100),
step 4 ``get_layer_mask_schedule`` (growth factor 0.55), the reuse itself the fork's
``LlamaModel.forward`` (siyuhsu/transformers, branch vla-cache-openvla-oft: ``pruning_loc = [2, 6,
9, 11]``, rows removed with ``torch.isin(cache_position, reusable[:top_k])``, the cache updated in
place by ``DynamicCache.update`` at the computed positions, so a token unchanged for several queries
keeps the keys/values of the last query that computed it).

What it saves, honestly: OpenVLA-OFT predicts a chunk in one forward, so "reusing the KV cache" means
that from layer ℓ on the reused tokens' *query rows* are not computed (no Q/K/V/O projection, no
MLP, no attention row); they are still *keys*. ``seq_lens`` (and ``flops_llm``, square attention)
count the computed rows; the attention of those rows over the appended cached keys (2·rows·R·D per
layer, the paper convention of ``flops_llm``) and the attention weights the method reads for steps 2
and 4 are added as ``scoring_flops``. The cache holds every visual token's keys/values of every
layer from the first reuse layer on (2 · layers · V · D_kv values).

Mechanism here: a pruner cannot express "drop these rows but keep them as keys" with a
:class:`~vla_adp.seam.keep.KeepSet` alone, so the decoder offers *attention taps*
(:data:`vla_adp.model.llm.AttentionTap`, installed through ``LayerContext.taps``): at layer 0 this
pruner installs one tap per layer that records the visual rows' keys/values, appends the cached
ones of the reused tokens, and reads the attention statistics of steps 2 and 4 from the same q/k (no
second projection). The cuts themselves are ordinary keeps with original positions.

Deviations from the reference code:
* The previous frame is the previous *query's* frame, copied when the query ends. The released OFT
  evaluation (``run_libero_eval.py``) sets ``prev_img = replay_images[-1]`` right after appending
  the current frame, so it compares every frame with itself: every patch scores ≈ 1, "static" is
  just the first 150 patches by float noise, whatever moved. (Even without that, ``replay_images``
  holds every env step while the cache is from the previous query, 8 steps back.)
* Text rows for step 2: the prompt (incl. '▁') of this layout; the reference hard-codes positions
  513..546 (proprio plus 33 prompt positions, whatever the prompt length).
* An empty reusable set means no reuse (the reference passes ``None`` and fails in ``len(None)``,
  an error its evaluation loop counts as a failed episode).
* Attention statistics come from taps on the layers' own q/k (float32) instead of
  ``output_attentions`` with eager attention in every layer; ``schedule="constant"`` (r_ℓ = 1) skips
  the entropy and its cost.
* ``keep_ratio`` (optional): at most round((1−ρ)·n_c) static tokens per camera, so that sweeps over ρ
  work; ``None`` (default) = the reference's 150 of 256, scaled to other grids as k·n_c/256.
* Batch 1 only, through ``OpenVLAOFT.forward`` (the batched multi-episode path offers no taps), not
  on padded training batches, no CUDA graphs for tapped segments (they run eagerly).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.keep import KeepSet

SCHEDULES = ("entropy", "constant")
REFERENCE_GRID = 256  # patches per camera the reference's top-k counts are for (224 px, 14-px patches)


# -- pure math -------------------------------------------------------------------------------------
def patches(image: np.ndarray, n_patches: int) -> np.ndarray:
    """(H, W, C) image -> (N, p·p·C) float32 rows of its p×p patches, row-major (the token order)."""
    side = math.isqrt(n_patches)
    h, w, c = image.shape
    if side * side != n_patches or h % side or w % side or h != w:
        raise ValueError(f"a square image split into {n_patches} square patches is needed, got {image.shape}")
    p = h // side
    grid = np.asarray(image, np.float32).reshape(side, p, side, p, c).transpose(0, 2, 1, 3, 4)
    return grid.reshape(n_patches, p * p * c)


def patch_similarity(previous: np.ndarray, current: np.ndarray, n_patches: int) -> np.ndarray:
    """Cosine similarity of each patch between two frames, (N,) float32 (``calculate_patch_similarity``)."""
    a, b = patches(previous, n_patches), patches(current, n_patches)
    dot = (a * b).sum(1)
    return dot / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)


def static_patches(previous: np.ndarray, current: np.ndarray, n_patches: int, threshold: float, top_k: int) -> list[int]:
    """Step 1: patches with similarity >= τ, the ``top_k`` most similar (ties: lower index first)."""
    sim = patch_similarity(previous, current, n_patches)
    order = sorted(np.flatnonzero(sim >= threshold).tolist(), key=lambda i: (-float(sim[i]), i))
    return order[:top_k]


def row_entropy(probs: Tensor) -> Tensor:
    """Step 4, inner part: (B, H, R, S) attention -> mean over rows of the entropy of the head-mean row."""
    a = probs.float().mean(dim=1)
    a = torch.nan_to_num(a / (a.sum(-1, keepdim=True) + 1e-10))
    return -(a * torch.log(a + 1e-10)).sum(-1).mean()


def reuse_schedule(entropies: Tensor, growth: float = 0.55) -> Tensor:
    """Step 4: per-layer reuse proportion r = 1 − minmax(H), each upward step shrunk by ``growth``."""
    h = entropies.float()
    reuse = (1.0 - (h - h.min()) / (h.max() - h.min() + 1e-10)).tolist()
    for i in range(1, len(reuse)):
        if reuse[i] > reuse[i - 1]:
            reuse[i] = reuse[i - 1] + (reuse[i] - reuse[i - 1]) * growth
    return torch.tensor(reuse)


def reuse_counts(proportions: dict[int, float], n_reusable: int) -> dict[int, int]:
    """Tokens reused from each reuse layer on: max(1, ⌊r_ℓ·n⌋), never fewer than at an earlier layer
    (the fork only cuts where the count grows); empty when nothing is reusable."""
    counts, most = {}, 0
    if n_reusable == 0:
        return counts
    for layer in sorted(proportions):
        most = max(most, min(n_reusable, max(1, int(proportions[layer] * n_reusable))))
        counts[layer] = most
    return counts


# -- config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VLACacheConfig:
    """VLA-Cache settings (reference values; counts are per 256-patch camera, scaled to other grids).

    Args:
        keep_ratio: ``None`` (reference) or ρ: at most round((1−ρ)·n_c) static tokens per camera are
            candidates (1.0: nothing is reused, bit-identical to unpruned).
        similarity: τ, the cosine similarity from which a patch counts as unchanged.
        static_top_k: most similar static patches kept as candidates per camera (150).
        relevant_top_k: tokens per camera that the text attends to most, never reused (100).
        relevance_layer: layer whose prompt→vision attention ranks the relevant tokens (15).
        reuse_layers: layers from which the reused count may grow ((2, 6, 9, 11)).
        schedule: ``entropy`` (step 4, from the previous query's attention) or ``constant`` (r = 1:
            every reusable token from the first reuse layer on, no entropy computed).
        growth: the schedule's factor on upward steps (0.55).
    """

    keep_ratio: float | None = None
    similarity: float = 0.996
    static_top_k: int = 150
    relevant_top_k: int = 100
    relevance_layer: int = 15
    reuse_layers: tuple[int, ...] = (2, 6, 9, 11)
    schedule: str = "entropy"
    growth: float = 0.55

    def __post_init__(self) -> None:
        if self.keep_ratio is not None and (not isinstance(self.keep_ratio, (int, float))
                                            or not 0.0 < self.keep_ratio <= 1.0):
            raise ValueError(f"VLACacheConfig.keep_ratio must be None or in (0, 1], got {self.keep_ratio!r}")
        if not isinstance(self.similarity, (int, float)) or not -1.0 <= self.similarity <= 1.0:
            raise ValueError(f"VLACacheConfig.similarity must be a cosine in [-1, 1], got {self.similarity!r}")
        for name in ("static_top_k", "relevant_top_k", "relevance_layer"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"VLACacheConfig.{name} must be an int >= 0, got {value!r}")
        layers = self.reuse_layers
        if (not isinstance(layers, (tuple, list)) or not layers
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
                or list(layers) != sorted(set(layers))):
            raise ValueError(f"VLACacheConfig.reuse_layers must be increasing ints >= 0, got {layers!r}")
        object.__setattr__(self, "reuse_layers", tuple(layers))
        if self.schedule not in SCHEDULES:
            raise ValueError(f"VLACacheConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.growth, (int, float)) or not 0.0 <= self.growth <= 1.0:
            raise ValueError(f"VLACacheConfig.growth must be in [0, 1], got {self.growth!r}")

    def static_count(self, n_patches: int) -> int:
        if self.keep_ratio is not None:
            return round((1.0 - self.keep_ratio) * n_patches)
        return round(self.static_top_k * n_patches / REFERENCE_GRID)

    def relevant_count(self, n_patches: int) -> int:
        return round(self.relevant_top_k * n_patches / REFERENCE_GRID)


# -- pruner ----------------------------------------------------------------------------------------
@dataclass
class _Memory:
    """What one query leaves for the next: its frames (copies), keys/values, attention statistics."""

    frames: tuple[np.ndarray, ...]
    views: tuple[int, ...]
    cache: dict[int, tuple[Tensor, Tensor]]  # layer -> (K, V) of every visual token, (1, Hkv, V, hd)
    relevance: Tensor | None  # (V,) prompt→vision attention at the relevance layer
    entropy: Tensor | None  # (n_layers,) or None (constant schedule)


class VLACachePruner:
    """VLA-Cache: unchanged, task-irrelevant visual tokens reuse the previous query's keys/values."""

    name = "vla_cache"

    def __init__(self, config: VLACacheConfig = VLACacheConfig()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        """New episode: no previous frame, no cache."""
        self._memory: _Memory | None = None
        self._clear_query()

    def _clear_query(self) -> None:
        self._frames: tuple[np.ndarray, ...] | None = None
        self._reusable = torch.zeros(0, dtype=torch.long)
        self._counts: dict[int, int] = {}
        self._static: list[int] = []
        self._rows: Tensor | None = None  # visual ids of the visual rows computed now (ascending)
        self._reused = torch.zeros(0, dtype=torch.long)  # visual ids whose cached keys/values are read
        self._layout = None
        self._cache: dict[int, tuple[Tensor, Tensor]] = {}
        self._entropy: dict[int, Tensor] = {}
        self._relevance: Tensor | None = None
        self._probs_flops = self._reuse_flops = 0.0

    # -- per query ---------------------------------------------------------------------------
    def begin(self, query: Query) -> frozenset[int]:
        self._clear_query()
        cfg = self.config
        if cfg.keep_ratio is not None and cfg.keep_ratio >= 1.0:
            return frozenset()
        if query.images is None or len(query.images) != len(query.layout.views):
            got = None if query.images is None else len(query.images)
            raise ValueError(f"VLA-Cache compares each camera image with the previous query's: the query needs "
                             f"{len(query.layout.views)} images (Query.images; Policy.infer passes them), got {got}")
        self._frames = tuple(np.array(img, dtype=np.uint8, copy=True) for img in query.images)  # no aliasing
        memory = self._memory
        if memory is not None and memory.views == query.layout.views and self._same_shapes(memory.frames):
            self._reusable = self._select(memory, query.layout.views)
            self._counts = reuse_counts(self._proportions(memory), len(self._reusable))
        return frozenset({0, *self._counts})

    def _same_shapes(self, frames: tuple[np.ndarray, ...]) -> bool:
        return all(a.shape == b.shape for a, b in zip(frames, self._frames))

    def _select(self, memory: _Memory, views: tuple[int, ...]) -> Tensor:
        """Steps 1–3: per camera, static minus relevant, ascending visual ids, cameras in order."""
        cfg, out, start = self.config, [], 0
        for c, n in enumerate(views):
            static = static_patches(memory.frames[c], self._frames[c], n, cfg.similarity, cfg.static_count(n))
            relevant: set[int] = set()
            if memory.relevance is not None and cfg.relevant_count(n):
                scores = memory.relevance[start:start + n]
                relevant = set(scores.topk(min(n, cfg.relevant_count(n))).indices.tolist())
            self._static.append(len(static))
            out += [start + i for i in sorted(set(static) - relevant)]
            start += n
        return torch.tensor(out, dtype=torch.long)

    def _proportions(self, memory: _Memory) -> dict[int, float]:
        if self.config.schedule == "constant" or memory.entropy is None:
            return {layer: 1.0 for layer in self.config.reuse_layers}
        r = reuse_schedule(memory.entropy, self.config.growth)
        return {layer: float(r[layer]) for layer in self.config.reuse_layers if layer < len(r)}

    def at_layer(self, ctx: LayerContext) -> KeepSet | None:
        if ctx.index == 0:
            self._install(ctx)
        if ctx.index not in self._counts:
            return None
        reused = self._reusable[: self._counts[ctx.index]]
        stay = ~torch.isin(self._rows, reused)
        index = stay.nonzero().flatten()
        self._rows, self._reused = self._rows[stay], reused
        starts = np.cumsum((0, *self._original_views[:-1]))
        views = tuple(int(((self._rows >= a) & (self._rows < a + n)).sum()) for a, n in zip(starts, self._original_views))
        keep = KeepSet(index[None].to(ctx.hidden.device), views, positions="original")
        self._layout = ctx.layout.with_views(views)
        return keep

    def _install(self, ctx: LayerContext) -> None:
        if ctx.taps is None:
            raise ValueError("VLA-Cache needs the decoder's attention taps (OpenVLAOFT.forward); this forward "
                             "offers none (the batched multi-episode path): run it with batch 1 / envs 1")
        if ctx.hidden.shape[0] != 1:
            raise ValueError(f"VLA-Cache keeps one episode's cache and runs batch 1, got batch {ctx.hidden.shape[0]}")
        if ctx.key_mask is not None:
            raise ValueError("VLA-Cache does not run on padded training batches (key_mask given)")
        n = ctx.shape.n_layers
        if max(self.config.reuse_layers) >= n:
            raise ValueError(f"VLACacheConfig.reuse_layers={self.config.reuse_layers} but this decoder has layers "
                             f"0..{n - 1}")
        if self.config.relevance_layer >= n:
            raise ValueError(f"VLACacheConfig.relevance_layer={self.config.relevance_layer} but this decoder has "
                             f"layers 0..{n - 1}")
        self._original_views = ctx.layout.views
        self._rows = torch.arange(ctx.layout.n_visual)
        self._layout = ctx.layout
        self._first_reuse = min(self.config.reuse_layers)
        for layer in range(n):
            ctx.taps[layer] = functools.partial(self._tap, layer)

    # -- the attention tap -------------------------------------------------------------------
    def _tap(self, layer: int, q: Tensor, k: Tensor, v: Tensor, mask):
        layout = self._layout
        vis = slice(layout.visual.start, layout.visual.start + len(self._rows))
        rows = self._rows.to(k.device)
        if layer >= self._first_reuse:
            self._record(layer, k[:, :, vis], v[:, :, vis], rows)
        reused = self._reused.to(k.device)
        if len(reused):
            old_k, old_v = self._memory.cache[layer]
            self._reuse_flops += 2.0 * q.shape[2] * len(reused) * q.shape[1] * q.shape[3]
            k = torch.cat([k, old_k[:, :, reused]], dim=2)
            v = torch.cat([v, old_v[:, :, reused]], dim=2)
        entropy = self.config.schedule == "entropy"
        if entropy or layer == self.config.relevance_layer:
            text = torch.arange(layout.prompt.start, layout.prompt.stop, device=q.device)
            qr = q if entropy else q[:, :, text]
            kk = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            probs = (qr.float() @ kk.float().transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
            self._probs_flops += 2.0 * qr.shape[1] * qr.shape[2] * kk.shape[2] * q.shape[-1]
            if entropy:
                self._entropy[layer] = row_entropy(probs)
            if layer == self.config.relevance_layer:
                text_probs = probs[:, :, text] if entropy else probs
                self._relevance = self._visual_attention(text_probs, vis, rows, reused)
        return k, v, mask

    def _record(self, layer: int, k: Tensor, v: Tensor, rows: Tensor) -> None:
        """This query's keys/values of every visual token at ``layer``: computed rows new, reused ones carried."""
        if len(rows) == sum(self._original_views):
            self._cache[layer] = (k.detach().clone(), v.detach().clone())
            return
        old_k, old_v = self._memory.cache[layer]
        new_k, new_v = old_k.clone(), old_v.clone()
        new_k[:, :, rows], new_v[:, :, rows] = k, v
        self._cache[layer] = (new_k, new_v)

    def _visual_attention(self, probs: Tensor, vis: slice, rows: Tensor, reused: Tensor) -> Tensor:
        """Mean over heads and prompt rows of the attention each visual token receives, (V,) by visual id."""
        received = probs.float().mean(dim=(1, 2))[0]  # (S_k,): current keys, then appended cached keys
        out = torch.zeros(sum(self._original_views), device=received.device)
        out[rows] = received[vis]
        if len(reused):
            out[reused] = received[-len(reused):]
        return out.cpu()

    def end(self, outcome: QueryOutcome) -> dict[str, Any]:
        cfg = self.config
        info = {"keep_ratio": cfg.keep_ratio, "vla_cache_static": list(self._static),
                "vla_cache_reusable": len(self._reusable), "vla_cache_reusable_ids": self._reusable.tolist(),
                "vla_cache_reused": max(self._counts.values(), default=0),
                "vla_cache_reuse_layers": {str(k): v for k, v in self._counts.items()},
                "reuse_attention_flops": self._reuse_flops,
                "scoring_flops": self._probs_flops + self._reuse_flops}
        if self._frames is not None and self._rows is not None:
            n = len(self._entropy)
            entropy = torch.stack([self._entropy[i] for i in range(n)]).cpu() if n else None
            self._memory = _Memory(self._frames, self._original_views, self._cache, self._relevance, entropy)
        self._clear_query()
        return info


PRUNER = VLACachePruner
CONFIG = VLACacheConfig
