"""VLA-Pruner on autoregressive OpenVLA (Liu et al., arXiv 2511.16449; MINT-SJTU/VLA-Pruner ``src/openvla``).

The OpenVLA fork differs from the OpenVLA-OFT one (:mod:`vla_adp.pruning.pruners.vla_pruner`) in where
the action score comes from: OpenVLA has no action slots in its prefill, so the fork reads the attention
that the rows *producing* the action tokens pay to the image at layer 15 — the last prefill row ('▁',
whose logits give action token 1) and the six cached decode rows (``predict_action`` →
``_extract_action_modality_attentions``: heads and the seven rows averaged, pruned tokens 0).

    query t:  layers 0..K-2 ─► hook: attention of layer K-1, scoring rows (s_sem) ─► layer K-1
              ─► hook: Top-k(s_sem) ∪ Top-k(s_act), max-min diversity, cut (original positions)
              ─► layers K..14 ─► hook: last row's attention at layer 15 ─► … ─► action token 1
              decode steps 1..6: layer 15 reports each row's attention over its cache (DecodeObserver)
    end:      a_t = mean over heads and the 7 rows, scattered to all 256 patches → history
    s_act     = Σ_i γ^i a_{t-1-i} / Σ γ^i over the last w queries (newest weight 1)

Reproduced from the fork (``transformers/.../modeling_llama.py`` ``fastv_forward``, ``modeling_prismatic.py``):
FastV's layer convention here (attention of layer K−1 = 2, cut before K = 3; the OFT fork is off by
one), ``fastv_k=3``, keep round(256·(1 − fastv_r)); scoring row ``last`` (the fork's default,
``use_prefil_attention=False``) or ``prefill`` (mean over every prefill row of the causal attention);
warm-up: the first w = 3 queries of an episode run unpruned and only fill the history; union of both
top-k, then greedy max-min cosine diversity on the projector outputs (the same math as the OFT variant,
:func:`~vla_adp.pruning.pruners.vla_pruner.relevance_then_diversity`); the kept tokens keep their
original positions, and the layers from the cut on cache only them.

Deviations: attention weights are computed only for the needed rows of the two layers (every layer
keeps SDPA; the fork runs eager attention with ``output_attentions`` in all 32), in float32; the
diversity distances in float32 (fork: bf16); batches keep one history per row (the fork: batch 1).
Not registered in :data:`vla_adp.pruning.registry.PRUNERS` (whose sweep runs OpenVLA-OFT):
:func:`vla_adp.pruning.openvla.build_openvla_pruner` maps ``vla_pruner`` to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from vla_adp.seam.flops import attention_rows_flops
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.keep import KeepSet
from vla_adp.pruning.pruners.vla_pruner import VLAPrunerPruner, check_shared_fields, scatter_visual

# The fork's flags (src/openvla run_libero_eval.py GenerateConfig / OpenVLAConfig) -> our fields.
FORK_FIELDS = {"fastv_k": "layer", "av_hist_w": "history", "temporal_w": "history", "av_decay": "decay",
               "temporal_gamma": "decay"}


@dataclass(frozen=True)
class VLAPrunerOpenVLAConfig:
    """VLA-Pruner settings for OpenVLA (the fork's defaults).

    Args:
        keep_ratio: ρ; the image keeps round(ρ·256) tokens (1.0 = unpruned, bit for bit).
        layer: FastV's K, as :class:`~vla_adp.pruning.pruners.fastv.FastVConfig`'s ``layer``: attention of
            layer K−1 gives the semantic score, tokens are dropped before layer K (the fork's ``fastv_k``).
        action_layer: layer whose action-producing rows feed the history (15).
        history: window length w; also the warm-up (queries run unpruned until it is full).
        decay: γ; weight γ^age, newest entry age 0.
        attention_source: semantic rows, ``last`` (the '▁' row, fork default) or ``prefill`` (all rows).
        mode: ``semantic_action`` (the method), ``semantic`` or ``action`` (one score's top-k alone).
    """

    keep_ratio: float = 0.5
    layer: int = 3
    action_layer: int = 15
    history: int = 3
    decay: float = 0.8
    attention_source: str = "last"
    mode: str = "semantic_action"
    fork_fields: ClassVar[dict[str, str]] = FORK_FIELDS  # config-file names -> ours
    model: ClassVar[str] = "OpenVLA"  # for error messages

    def __post_init__(self) -> None:
        check_shared_fields(self)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"{type(self).__name__}.layer must be an int >= 1 (layer K-1 is scored), "
                             f"got {self.layer!r}")

    @property
    def score_layer(self) -> int:
        return self.layer - 1

    @property
    def cut_layer(self) -> int:
        return self.layer

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAPrunerOpenVLAConfig":
        """Our field names, or the fork's: ``fastv_k``, ``fastv_r`` (= 1 − ρ), ``use_prefil_attention``,
        ``av_hist_w``/``temporal_w``, ``av_decay``/``temporal_gamma``; ``use_temporal=false`` (FastV) is refused."""
        out: dict[str, Any] = {}
        ours = set(cls.__dataclass_fields__)
        for key, value in data.items():
            if key in ours:
                out[key] = value
            elif key in cls.fork_fields:
                out.setdefault(cls.fork_fields[key], value)
            elif key == "fastv_r":
                if not 0.0 <= float(value) < 1.0:
                    raise ValueError(f"fastv_r={value!r} must be in [0, 1) (it is the share of image tokens dropped)")
                out.setdefault("keep_ratio", 1.0 - float(value))
            elif key == "use_prefil_attention":
                out.setdefault("attention_source", "prefill" if value else "last")
            elif key == "use_temporal":
                if not value:
                    raise ValueError("use_temporal=false runs the fork's plain FastV: use the fastv pruner")
            elif key not in ("use_fastv",):
                known = ours | set(cls.fork_fields) | {"fastv_r", "use_prefil_attention", "use_temporal"}
                raise ValueError(f"unknown VLA-Pruner ({cls.model}) config field {key!r}; expected one of "
                                 f"{sorted(known)}")
        return cls(**out)


class VLAPrunerOpenVLA(VLAPrunerPruner):
    """VLA-Pruner on OpenVLA: semantic ∪ decayed action-token attention, max-min diversity (fork ``src/openvla``).

    The OFT variant's warm-up, hooks and selection; the action score comes from the prefill's last row
    and the decode steps instead of the action slots.
    """

    name = "vla_pruner_openvla"

    def __init__(self, config: VLAPrunerOpenVLAConfig = VLAPrunerOpenVLAConfig()):
        super().__init__(config)

    def _clear_query(self) -> None:
        super()._clear_query()
        self._observing = False
        self._action_sum, self._rows, self._n_visual = None, 0, 0

    # -- the Pruner protocol --------------------------------------------------------------------
    def begin(self, query: Query) -> frozenset[int]:
        hooks = super().begin(query)
        self._observing = bool(hooks)  # the action layer is watched on every query that may prune
        return hooks

    def at_layer(self, ctx: LayerContext) -> KeepSet | None:
        if ctx.layout.n_action:
            raise ValueError("vla_pruner_openvla reads OpenVLA's decode steps; this sequence has action slots "
                             "(OpenVLA-OFT): use the vla_pruner pruner there")
        cfg = self.config
        self._n_visual = ctx.visual.shape[1]
        keep = self._score_and_cut(ctx)
        if ctx.index == cfg.action_layer:
            here = ctx if keep is None else ctx.after_cut(keep)
            last = torch.tensor([here.layout.stop])  # the row whose logits give action token 1
            self._add_action_row(here.attention_probs(last), here.layout)
            self._flops += attention_rows_flops(ctx.shape, 1, here.layout.length)
        return keep

    def decode_layers(self) -> frozenset[int]:
        """The model reports these layers at every decode step (``DecodeObserver``)."""
        return frozenset({self.config.action_layer}) if self._observing else frozenset()

    def at_decode(self, ctx) -> None:
        """Decode step's row at the action layer: its attention over the cache (prefill rows first)."""
        if ctx.index == self.config.action_layer:
            probs = ctx.attention_probs()
            self._add_action_row(probs, ctx.layout)
            args = ctx.llm.args  # the keys are cached: q of one row and its logits only
            self._flops += 2 * args.dim * args.n_heads * args.head_dim + 2 * args.n_heads * probs.shape[-1] * args.head_dim

    def end(self, outcome: QueryOutcome) -> dict[str, Any]:
        warmup = self._observing and not self._pruning
        if self._rows:
            self._history.append((self._action_sum / self._rows).detach())
        info = {"keep_ratio": self.config.keep_ratio, "vla_pruner_warmup": warmup,
                "vla_pruner_history": len(self._history), "scoring_layer": self.config.score_layer,
                "action_layer": self.config.action_layer, "action_rows": self._rows, "scoring_flops": self._flops}
        self._clear_query()
        return info

    # -- steps ------------------------------------------------------------------------------------
    def _add_action_row(self, probs: Tensor, layout) -> None:
        """Add one action-producing row's image attention (heads averaged), on all V patches."""
        seen = probs[..., layout.visual].float().mean(dim=(1, 2))  # (B, visual tokens this layer cached)
        cut = self._keep is not None and self.config.action_layer >= self.config.cut_layer
        row = scatter_visual(seen, self._keep if cut else None, self._n_visual)
        self._action_sum = row if self._action_sum is None else self._action_sum + row
        self._rows += 1


PRUNER = VLAPrunerOpenVLA
CONFIG = VLAPrunerOpenVLAConfig
