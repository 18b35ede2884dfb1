"""FastV (Chen et al., ECCV 2024, "An Image is Worth 1/2 Tokens After Layer 2"; pkunlp-icler/FastV).

After K decoder layers (``layer``) have run on the full sequence, rank the visual tokens by the attention they
receive in layer K−1 (softmax(q·kᵀ/√d) with RoPE, mean over heads) from the scoring rows, keep the
top round(ρ·n), drop the rest in place and keep the original RoPE positions of what stays:

    layers 0..K-1 on L tokens            the hook before layer K-1 computes q·kᵀ for the scoring rows
         │  cut before layer K: BOS | kept visual | proprio, prompt, slots, </s>   (positions kept)
    layers K..31 on L - V + k tokens

Reference behaviour (pkunlp-icler/FastV; MINT-SJTU/VLA-Pruner ``src/openvla-oft``) and where this file differs:

* Layer convention. ``convention="fastv"`` (FastV's code, VLA-Pruner's OpenVLA fork): attention of
  layer K−1, tokens dropped before layer K; the FastV paper's default is K=2. VLA-Pruner's
  OpenVLA-OFT fork is off by one (``convention="vla_pruner_oft"``): attention of layer K itself,
  dropped before layer K+1, with K=3. Its FastV on OFT is ``layer=3, convention="vla_pruner_oft",
  attention_source="prefill", budget="per_view"``, which the fork's flags (``fastv_k``, ``fastv_r``,
  ``fastv_attention_source``, ...) select in ``FastVConfig.from_dict``.
* Scoring rows. ``last`` is FastV's last token; in OpenVLA-OFT that is the </s> stop token, whose
  row sees everything (bidirectional attention). ``prefill`` averages every row before the action
  slots, as the OFT fork's default ``fastv_attention_source=prefill`` does.
* Budget. FastV has one image, so ``global`` (round(ρ·V) over all cameras) is the literal transfer
  and the default; ``per_view`` keeps round(ρ·n_c) per camera like the OFT fork.
* Attention weights. The references switch every layer to eager attention (``output_attentions``),
  which slows the whole model (VLA-Pruner #12, FastV #31). Here only the scoring rows of the one
  scoring layer are recomputed (:meth:`~vla_adp.seam.context.LayerContext.attention_probs`, float32);
  every layer, the scoring layer included, runs SDPA. That recomputation (q for the rows, k for all
  keys, the logits) is reported as ``scoring_flops``.
* No KV cache: OpenVLA-OFT predicts a chunk in one forward pass, so FastV's decode-time reuse and
  its duplicate-KV bug (FastV #46) do not arise.
* Batches: rows are scored and cut independently; the ``global`` budget needs every row to split
  the same way over the cameras (else a clear error), ``per_view`` always works.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from vla_adp.pruning.scoring import ROW_SOURCES, layer_attention_scores, score_rows
from vla_adp.pruning.select import select_top_budget
from vla_adp.seam.budget import BUDGETS
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.flops import attention_rows_flops
from vla_adp.seam.keep import KeepSet

CONVENTIONS = ("fastv", "vla_pruner_oft")


@dataclass(frozen=True)
class FastVConfig:
    """FastV settings.

    Args:
        keep_ratio: ρ, share of visual tokens kept (1.0 = unpruned, bit for bit).
        layer: FastV's K: the decoder layer before which tokens are dropped (``fastv`` convention).
        convention: ``fastv`` (score with layer K−1, cut before K) or ``vla_pruner_oft`` (score
            with layer K, cut before K+1, as VLA-Pruner's OpenVLA-OFT fork).
        attention_source: ``last`` (the </s> row) or ``prefill`` (mean over rows before the slots).
        budget: ``global`` top-k over all cameras or ``per_view`` round(ρ·n_c) per camera.
    """

    keep_ratio: float = 0.5
    layer: int = 2
    convention: str = "fastv"
    attention_source: str = "last"
    budget: str = "global"

    def __post_init__(self) -> None:
        if not isinstance(self.keep_ratio, (int, float)) or not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"FastVConfig.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"FastVConfig.convention must be one of {CONVENTIONS}, got {self.convention!r}")
        least = 1 if self.convention == "fastv" else 0
        if not isinstance(self.layer, int) or self.layer < least:
            raise ValueError(f"FastVConfig.layer must be an int >= {least} with convention {self.convention!r} "
                             f"(the scoring layer must exist), got {self.layer!r}")
        if self.attention_source not in ROW_SOURCES:
            raise ValueError(f"FastVConfig.attention_source must be one of {ROW_SOURCES}, got {self.attention_source!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"FastVConfig.budget must be one of {BUDGETS}, got {self.budget!r}")

    @property
    def score_layer(self) -> int:
        return self.layer - 1 if self.convention == "fastv" else self.layer

    @property
    def cut_layer(self) -> int:
        return self.score_layer + 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FastVConfig":
        """Our field names or the VLA-Pruner OFT fork's flags (``FORK_FLAGS``).

        Any fork flag selects the fork's FastV: its layer convention (``vla_pruner_oft``: attention
        of layer ``fastv_k`` itself, cut before ``fastv_k + 1``), its per-camera budget and its
        defaults for what is not given (``fastv_k=3``, ``fastv_r=0.5``, ``fastv_attention_source``
        "prefill"; the fork scores "last" = the final row, anything else = the prefill rows).
        Our names, where given too, win. The fork's VLA-Pruner/VLA-Cache flags of the same flag
        set do not change its FastV and are ignored with a warning.
        """
        data, ours = dict(data), {f.name for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        fork = {k: v for k, v in data.items() if k in FORK_FLAGS}
        if fork:
            fork = {**FORK_DEFAULTS, **fork}
            if fork.get("use_vla_cache"):
                raise ValueError("use_vla_cache=true selects VLA-Cache (token reuse with a KV cache), the separate "
                                 "'vla_cache' pruner here; set it to false to run FastV")
            if not fork.get("use_fastv", True):
                warnings.warn("use_fastv=false in a FastV config: building FastV anyway (the pruner name selects it)")
            if not fork.get("use_prefil_attention", True) and fork["fastv_attention_source"] != "last":
                raise ValueError("use_prefil_attention=false makes the fork score from the last text token's row, "
                                 "which vla-adp does not offer; use fastv_attention_source 'last' (the </s> row) or "
                                 "'prefill'")
            r = float(fork["fastv_r"])
            if r >= 1.0:
                raise ValueError(f"fastv_r={fork['fastv_r']!r} keeps no visual token (the fork keeps "
                                 "round(256*(1-fastv_r)) per camera); use fastv_r < 1")
            out.update(layer=int(fork["fastv_k"]), keep_ratio=min(1.0, 1.0 - r), convention="vla_pruner_oft",
                       budget="per_view",
                       attention_source="last" if fork["fastv_attention_source"] == "last" else "prefill")
        ignored = []
        for key, value in data.items():
            if key in ours:
                out[key] = value
            elif key in OTHER_FORK_FLAGS:
                ignored.append(key)
            elif key not in FORK_FLAGS:
                raise ValueError(f"unknown FastV config field {key!r}; expected one of "
                                 f"{sorted(ours | set(FORK_FLAGS))}")
        if ignored:
            warnings.warn(f"FastV config: {ignored} do not change the fork's FastV; ignored")
        return cls(**out)


# VLA-Pruner OFT fork (MINT-SJTU/VLA-Pruner src/openvla-oft, eval dataclass): the flags that drive its
# FastV, their defaults, and the flags of the same flag set that belong to its other methods.
FORK_FLAGS = ("fastv_k", "fastv_r", "fastv_attention_source", "use_fastv", "use_prefil_attention", "use_vla_cache",
              "use_vla_pruner")
FORK_DEFAULTS: dict[str, Any] = {"fastv_k": 3, "fastv_r": 0.5, "fastv_attention_source": "prefill"}
OTHER_FORK_FLAGS = ("vla_pruner_layer", "vla_pruner_mode", "vla_pruner_av_hist_w", "vla_pruner_av_decay",
                    "vla_pruner_action_horizon", "vla_pruner_semantic_weight", "vla_pruner_action_weight",
                    "vla_pruner_static_only", "vla_pruner_use_layer_schedule", "av_hist_w", "av_decay")


class FastVPruner:
    """FastV: rank visual tokens by one layer's attention, drop the rest in place (original positions)."""

    name = "fastv"

    def __init__(self, config: FastVConfig = FastVConfig()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self._scores, self._flops = None, 0.0

    def begin(self, query: Query) -> frozenset[int]:
        self._scores, self._flops = None, 0.0
        if self.config.keep_ratio >= 1.0:
            return frozenset()
        return frozenset({self.config.score_layer, self.config.cut_layer})

    def at_layer(self, ctx: LayerContext) -> KeepSet | None:
        cfg = self.config
        if ctx.index == cfg.score_layer:
            rows = score_rows(ctx.layout, cfg.attention_source)
            self._scores = layer_attention_scores(ctx, rows)
            self._flops = attention_rows_flops(ctx.shape, len(rows), ctx.layout.length)
            return None
        if self._scores is None:
            raise RuntimeError(f"FastV reached its cut layer {ctx.index} without scores from layer {cfg.score_layer}")
        keep_set = select_top_budget(self._scores, ctx.layout.views, cfg.keep_ratio, cfg.budget)
        return keep_set.with_positions("original")  # the kept tokens keep their RoPE positions

    def end(self, outcome: QueryOutcome) -> dict[str, Any]:
        """Settings and ``scoring_flops``: the recomputed attention rows (the policy adds it to ``flops``)."""
        cfg, flops = self.config, self._flops
        self._scores, self._flops = None, 0.0
        return {"keep_ratio": cfg.keep_ratio, "scoring_layer": cfg.score_layer, "cut_layer": cfg.cut_layer,
                "attention_source": cfg.attention_source, "scoring_flops": flops}


PRUNER = FastVPruner
CONFIG = FastVConfig
