"""LightVLA (Jiang et al., arXiv 2509.12594, ICRA 2026; LiAutoAD/LightVLA ``TokenPruner``).

Parameter-free, differentiable pruning before decoder layer 0. The sequence splits into
BOS | V patches P | task tokens T, where T is everything after the visual tokens (proprio, prompt
incl. '▁', the 56 zero action slots and </s>), exactly the reference's ``[1, num_patches, rest]``
split with ``num_patches = 256 × n_images`` (LiAutoAD/LightVLA ``TokenPruner``):

    P̂ = rms(P),  T̂ = rms(T)                      RMS normalisation without weights (eps 1e-6)
    Q = rms(softmax(P̂ T̂ᵀ/√d) T̂)                   one query per patch: patches attend over the task
    S = Q P̂ᵀ / √d                                 (V × V): how much query i wants patch j
    inference:  keep = ⋃_i argmax_j S_ij          data-dependent count (report, not a budget)
    training:   S̃ = S + U(0,1)·(1 − step/max_steps)
                H = onehot(argmax S̃) + softmax(S̃) − sg(softmax(S̃))    straight-through estimator
                tokens = H P   (V tokens with duplicates; position id of each argmax patch)

The pruned patches leave the sequence and the kept ones keep their original position ids. The
count adapts per frame (the paper reports ~78 of 512 on LIBERO after fine-tuning), so ``keep_ratio``
has no effect: ``end()`` reports the achieved ratio instead. Without LightVLA fine-tuning the
argmaxes of a stock OFT checkpoint are not meaningful (the maintainers: start from the per-suite OFT
checkpoints and train 40k steps; LiAutoAD/LightVLA issue #19).

Training: ``pruner.train(True)`` and ``pruner.set_progress(step, max_steps)`` each step, then run
the model outside ``inference_mode``; the gradient reaches the projector and the LLM both through
the selected tokens and, via the straight-through softmax, through the scores. Until
``set_progress`` is called the noise scale is 1 (step 0).

Deviations from the reference code:
* Right-padded training batches: the pad tokens are masked out of the task keys (the reference
  lets patches attend to pads), so a sample scores the same alone and in a padded batch.
* The training noise comes from a seeded generator (``seed``, re-seeded by ``reset()``).
* ``scoring_flops`` reports the scorer's matmuls (:func:`~vla_adp.seam.flops.lightvla_flops`).
* Inference with batch > 1 raises a clear error (the reference's ``view(bsz, -1)`` silently
  assumes equal counts); training accepts batches because the length stays V.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vla_adp.pruning.select import view_counts
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.flops import lightvla_flops
from vla_adp.seam.keep import KeepSet


# -- pure math -------------------------------------------------------------------------------------
def rms(x: Tensor, eps: float = 1e-6) -> Tensor:
    """RMS normalisation without a learned weight, in (at least) float32, cast back (reference ``rms_norm``)."""
    y = x.to(torch.promote_types(x.dtype, torch.float32))
    return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def lightvla_scores(patches: Tensor, task: Tensor, task_mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """S = rms(softmax(P̂T̂ᵀ/√d)T̂)·P̂ᵀ/√d: (B, V, D), (B, T, D) -> (B, V, V).

    Args:
        task_mask: optional (B, T) bool, False on padding tokens (hidden from the queries).
    """
    p, t = rms(patches, eps), rms(task, eps)
    mask = None if task_mask is None else task_mask[:, None, :]
    queries = rms(F.scaled_dot_product_attention(p, t, t, attn_mask=mask), eps)
    return queries @ p.transpose(-2, -1) / math.sqrt(p.shape[-1])


def union_of_argmax(scores: Tensor) -> Tensor:
    """(B, V, V) -> (B, V) bool: patch j is kept if it is some query's argmax."""
    keep = torch.zeros(scores.shape[0], scores.shape[-1], dtype=torch.bool, device=scores.device)
    return keep.scatter(1, scores.argmax(dim=-1), True)


def straight_through_select(scores: Tensor, patches: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Training selection: (argmax indices (B, V), tokens H·P (B, V, D)) with the STE of the reference.

    Forward: each query's token is exactly its argmax patch; backward: the gradient of the one-hot
    is that of softmax(S̃), so the scores (and what produced them) learn.
    """
    if noise is not None:
        scores = scores + noise
    soft = scores.softmax(dim=-1)
    hard = F.one_hot(scores.argmax(dim=-1), num_classes=scores.shape[-1]).to(soft.dtype)
    weights = hard + soft - soft.detach()
    return weights.argmax(dim=-1), weights @ patches


# -- config ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LightVLAConfig:
    """LightVLA settings (the method itself has no hyper-parameters).

    Args:
        keep_ratio: accepted so that ``--keep`` and sweep configs do not fail, but it has **no
            effect**: the kept count is the number of distinct argmaxes (reported in ``info``).
        eps: RMS-norm epsilon (reference 1e-6).
        seed: seed of the training noise U(0, 1).
    """

    keep_ratio: float | None = None
    eps: float = 1e-6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.keep_ratio is not None:
            if not isinstance(self.keep_ratio, (int, float)) or not 0.0 < self.keep_ratio <= 1.0:
                raise ValueError(f"LightVLAConfig.keep_ratio must be None or in (0, 1], got {self.keep_ratio!r}")
            warnings.warn(f"LightVLA ignores keep_ratio={self.keep_ratio}: it keeps the union of per-query argmaxes "
                          "(a data-dependent count); info['keep_ratio_achieved'] reports what it kept")
        if not self.eps > 0:
            raise ValueError(f"LightVLAConfig.eps must be > 0, got {self.eps!r}")


# -- pruner ----------------------------------------------------------------------------------------
class LightVLAPruner:
    """LightVLA: keep every patch that some task-conditioned patch query points at (before layer 0)."""

    name = "lightvla"

    def __init__(self, config: LightVLAConfig = LightVLAConfig()):
        self.config = config
        self.training = False
        self.noise_scale = 1.0
        self.reset()

    def train(self, mode: bool = True) -> "LightVLAPruner":
        """Training mode: noisy straight-through selection with fixed length V (like ``nn.Module.train``)."""
        self.training = bool(mode)
        return self

    def eval(self) -> "LightVLAPruner":
        return self.train(False)

    def set_progress(self, step: int, max_steps: int) -> None:
        """Noise scale 1 − step/max_steps (linear decay to 0, the reference's schedule)."""
        if not isinstance(max_steps, int) or max_steps < 1 or not isinstance(step, int) or step < 0:
            raise ValueError(f"set_progress needs ints 0 <= step and max_steps >= 1, got step={step!r}, "
                             f"max_steps={max_steps!r}")
        self.noise_scale = max(0.0, 1.0 - step / max_steps)

    def reset(self) -> None:
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self._kept, self._flops = None, 0.0

    def begin(self, query: Query) -> frozenset[int]:
        self._kept, self._flops = None, 0.0
        return frozenset({0})

    def at_layer(self, ctx: LayerContext) -> KeepSet:
        layout = ctx.layout
        patches, task = ctx.hidden[:, layout.visual], ctx.hidden[:, layout.visual.stop :]
        task_mask = None if ctx.key_mask is None else ctx.key_mask[:, layout.visual.stop :]
        scores = lightvla_scores(patches, task, task_mask, self.config.eps)
        keep_set = self._train_keep(scores, patches, layout) if self.training else self._infer_keep(scores, layout)
        self._kept = (layout.n_visual, _distinct(keep_set.visual_index))
        self._flops = lightvla_flops(layout.n_visual, task.shape[1], task.shape[2], self.training)
        return keep_set

    def _infer_keep(self, scores: Tensor, layout) -> KeepSet:
        if scores.shape[0] != 1:
            raise ValueError(f"LightVLA inference keeps a data-dependent number of tokens per sample, so it runs "
                             f"batch 1 (as the reference); got batch {scores.shape[0]}. Training mode "
                             f"(pruner.train(True)) keeps V tokens and accepts batches.")
        visual = union_of_argmax(scores)[0].nonzero().flatten()[None]
        return KeepSet(visual, view_counts(visual, layout.views), positions="original")

    def _train_keep(self, scores: Tensor, patches: Tensor, layout) -> KeepSet:
        noise = None
        if self.noise_scale > 0:
            noise = torch.rand(scores.shape, generator=self._generator).to(scores) * self.noise_scale
        visual, tokens = straight_through_select(scores, patches, noise)
        # Token i belongs to query i, so the V slots split over the cameras as the queries do.
        return KeepSet(visual, layout.views, tokens=tokens, positions="original")

    def end(self, outcome: QueryOutcome) -> dict[str, Any]:
        """The achieved keep ratio: distinct kept patches / V (training rows hold V with duplicates)."""
        n_visual, distinct = self._kept or (0, 0)
        return {"keep_ratio": None, "keep_ratio_achieved": distinct / n_visual if n_visual else None,
                "lightvla_distinct": distinct, "lightvla_training": self.training, "scoring_flops": self._flops}


def _distinct(visual: Tensor) -> int:
    """Distinct kept patches of batch row 0 (training rows contain duplicates)."""
    return int(visual[0].unique().numel())


PRUNER = LightVLAPruner
CONFIG = LightVLAConfig
