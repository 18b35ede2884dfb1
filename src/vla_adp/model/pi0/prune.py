"""Image-token selection in the π0 / π0.5 prefix (the family's side of pruning, before the seam).

:class:`TextImageSelector` is ADP's text-driven selection (seed paper Eq. 7–12) on Gemma: at layer ℓ,
RMSNorm the layer input, average the real prompt rows, project with W_Q, score every real image token
by q̄·k / √d with k = W_K x̂ (no RoPE, heads averaged), then keep the top k_c tokens of each present
camera (quotas from :func:`vla_adp.seam.budget.view_quotas`, count from ``keep_count``) plus the
whole prompt. ``mode`` "inverse" keeps the lowest scores, "random" a uniform draw (the peers).

:class:`AttentionSelector` is FastV (Chen et al., ECCV 2024; pkunlp-icler/FastV) on the prefix: rank
the image tokens by the softmax attention they receive in layer K − 1 (heads averaged) from the
scoring rows — ``last`` (the last real prompt token, which sees the whole bidirectional prefix) or
``prefix`` (every real token) — keep round(ρ·V) over all present cameras (``global``) or per camera,
and cut before layer K, keeping RoPE positions.

Masked tokens — the empty camera slot (π0.5 on LIBERO fills the third slot with −1 and masks it) and
the prompt's right padding — are never attended to by any real token and do not advance RoPE
positions, so dropping them changes no real output (tested); ``drop_masked`` does that alone and
always does it when pruning. The ratio counts the *present* cameras' tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vla_adp.model.pi0.gemma import rms_normalize
from vla_adp.model.pi0.pi0 import PrefixContext
from vla_adp.seam.budget import BUDGETS, SELECTIONS, keep_count, view_quotas

SCORING_ROWS = ("last", "prefix")


def text_image_scores(ctx: PrefixContext, row: int) -> Tensor:
    """Φ over all image positions of batch row ``row`` (float32, (n_images,)); masked rows get −inf."""
    layer, pad = ctx.layer, ctx.pad[row]
    norm = layer.input_layernorm
    normed = (rms_normalize(ctx.hidden[row], norm.eps) * (1.0 + norm.weight.float())).to(ctx.hidden.dtype)
    text = torch.arange(*ctx.layout.text_span, device=pad.device)
    text = text[pad[text]]
    images = ctx.layout.image_positions.to(pad.device)
    attn = layer.self_attn
    q = attn.q_proj(normed[text].float().mean(0, keepdim=True).to(normed.dtype)).float()  # (1, H·hd)
    k = attn.k_proj(normed[images]).float()  # (V, KV·hd)
    h, kv, hd = attn.heads, attn.kv_heads, attn.head_dim
    q = q.view(kv, h // kv, hd)  # query heads grouped by their shared k head
    k = k.view(-1, kv, hd)
    phi = torch.einsum("gqd,vgd->v", q, k) / (h * math.sqrt(hd))
    return phi.masked_fill(~pad[images], float("-inf"))


@dataclass
class TextImageSelector:
    """ADP-style prefix pruning for π0 / π0.5 (see the module docstring).

    Args:
        keep_ratio: ρ, the share of present image tokens kept.
        layer: VLM layer whose input is scored and from which the prefix is shorter.
        mode: "top" (ADP), "inverse" (lowest Φ), "random".
        camera_weights: per-camera budget split (None = equal), as ADP's qk_keep_split.
        renumber: give kept tokens contiguous RoPE positions (False keeps their original ones).
        seed: for "random".
    """

    keep_ratio: float = 1.0
    layer: int = 0
    mode: str = "top"
    camera_weights: tuple[float, ...] | None = None
    renumber: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in SELECTIONS:
            raise ValueError(f"mode must be one of {SELECTIONS}, got {self.mode!r}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be a non-negative int, got {self.layer!r}")
        self.generator = torch.Generator().manual_seed(self.seed)

    def __call__(self, ctx: PrefixContext) -> Tensor:
        rows = [self._row(ctx, b) for b in range(ctx.hidden.shape[0])]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"batch rows keep different numbers of tokens {[len(r) for r in rows]}: "
                             "prune one query at a time or give every row the same masks")
        return torch.stack(rows)

    def _row(self, ctx: PrefixContext, b: int) -> Tensor:
        pad = ctx.pad[b]
        text = torch.arange(*ctx.layout.text_span, device=pad.device)
        spans = [(s, e) for s, e in ctx.layout.camera_spans if pad[s:e].all()]
        present = [torch.arange(s, e, device=pad.device) for s, e in spans]
        if self.keep_ratio < 1.0 and present:
            present = self._select(ctx, b, present)
        return torch.cat([*present, text[pad[text]]]).sort().values

    def _select(self, ctx: PrefixContext, b: int, cameras: list[Tensor]) -> list[Tensor]:
        sizes = tuple(len(c) for c in cameras)
        quotas = view_quotas(keep_count(sum(sizes), self.keep_ratio), sizes, self.camera_weights)
        if self.mode == "random":
            return [c[torch.randperm(len(c), generator=self.generator)[:q].to(c.device)] for c, q in zip(cameras, quotas)]
        phi = text_image_scores(ctx, b)
        image_index = {int(p): i for i, p in enumerate(ctx.layout.image_positions)}
        out = []
        for c, q in zip(cameras, quotas):
            scores = phi[[image_index[int(p)] for p in c]]
            out.append(c[scores.topk(q, largest=self.mode == "top").indices])
        return out


def drop_masked(layer: int = 0) -> TextImageSelector:
    """Keeps every real token and drops only masked ones (lossless)."""
    return TextImageSelector(keep_ratio=1.0, layer=layer)


@dataclass
class AttentionSelector:
    """FastV on the π0 prefix (see the module docstring).

    Args:
        keep_ratio: ρ, the share of present image tokens kept.
        layer: K ≥ 1: attention of layer K − 1 is scored, the prefix is cut before layer K (FastV: 2).
        rows: scoring rows, "last" or "prefix".
        budget: "global" (one top-k over all present cameras) or "per_view".
        renumber: give kept tokens contiguous RoPE positions (FastV keeps the original ones).
    """

    keep_ratio: float = 0.5
    layer: int = 2
    rows: str = "last"
    budget: str = "global"
    renumber: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"FastV scores layer K-1 and cuts before K, so layer must be an int >= 1, got {self.layer!r}")
        if self.rows not in SCORING_ROWS:
            raise ValueError(f"rows must be one of {SCORING_ROWS}, got {self.rows!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {BUDGETS}, got {self.budget!r}")
        self.scores: Tensor | None = None

    def observe(self, ctx: PrefixContext) -> None:
        if ctx.layer_index == self.layer - 1:
            self.scores = ctx.attention_received(self.scoring_rows(ctx))

    def scoring_rows(self, ctx: PrefixContext) -> Tensor:
        """(B, S) bool: the last real token of each row, or every real token."""
        if self.rows == "prefix":
            return ctx.pad.clone()
        last = ctx.pad.long().cumsum(dim=1).argmax(dim=1)  # first index reaching the row's count
        return torch.nn.functional.one_hot(last, ctx.pad.shape[1]).bool()

    def __call__(self, ctx: PrefixContext) -> Tensor:
        if self.scores is None:
            raise ValueError(f"FastV at layer {self.layer} saw no attention of layer {self.layer - 1}")
        rows = [self._row(ctx, b) for b in range(ctx.hidden.shape[0])]
        self.scores = None
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"batch rows keep different numbers of tokens {[len(r) for r in rows]}: "
                             "prune one query at a time or give every row the same masks")
        return torch.stack(rows)

    def _row(self, ctx: PrefixContext, b: int) -> Tensor:
        pad, score = ctx.pad[b], self.scores[b]
        text = torch.arange(*ctx.layout.text_span, device=pad.device)
        cameras = [torch.arange(s, e, device=pad.device) for s, e in ctx.layout.camera_spans if pad[s:e].all()]
        if cameras and self.keep_ratio < 1.0:
            sizes = tuple(len(c) for c in cameras)
            k = keep_count(sum(sizes), self.keep_ratio)
            if self.budget == "global":
                images = torch.cat(cameras)
                cameras = [images[score[images].topk(k).indices]]
            else:
                cameras = [c[score[c].topk(q).indices] for c, q in zip(cameras, view_quotas(k, sizes))]
        return torch.cat([*cameras, text[pad[text]]]).sort().values
