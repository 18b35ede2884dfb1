"""VLA-Pruner on flow-matching π0 / π0.5 (Liu et al., arXiv 2511.16449).

The paper reports π0 results but its repository (MINT-SJTU/VLA-Pruner) ships only the OpenVLA and
OpenVLA-OFT forks, so this variant transfers the method's definition to π0's structure. The
action-level score is what the paper defines it as — the attention the action-generating computation
pays to each visual token during decoding — which on π0 is the action expert's attention over the
cached prefix keys at one expert layer, averaged over heads, the ``chunk`` action rows and the N
denoising steps of the query; like the forks it is only available *after* the query, so the next
queries estimate it from a decayed window of previous ones:

    query t:  VLM layers 0..K-2 ─► hook: attention of layer K−1 from the scoring rows (s_sem)
              ─► hook before K: Top-k_c(s_sem) ∪ Top-k_c(s_act), max-min diversity, cut (original positions)
              ─► layers K..17, prefix cache ─► N denoising steps: expert layer ``action_layer`` reports
                 its attention over the prefix keys (ExpertObserver tap: the weights it used)
    end:      a_t = mean over steps, heads and action rows, scattered to all V image tokens → history
    s_act     = Σ_i γ^i a_{t-1-i} / Σ γ^i over the last w queries (newest weight 1)

Shared with the OFT variant (:mod:`vla_adp.pruning.pruners.vla_pruner`): the per-camera budget
k_c = round(ρ·n_c), the union + greedy max-min cosine diversity on the projector outputs (here the
SigLIP tokens after the projector), w = 3, γ = 0.8 (newest 1.0), the warm-up (the first w queries of
an episode run unpruned and only fill the history), a token pruned at query t scoring 0 on the action
side at t+1, original RoPE positions. FastV's layer convention (attention of K−1, cut before K).

Choices of this transfer (no reference code exists): ``k = 3`` as the OpenVLA fork, ``action_layer``
9 of π0's 18 expert layers (the forks read layer 15 of 32: mid-depth), semantic rows ``prefill``
(every real prefix token, as the OFT fork's bidirectional prefill) or ``last`` (the last prompt
token). The expert's weights come from the attention the model computes anyway (eager softmax), so
only the semantic rows cost extra FLOPs (``scoring_flops``).

Built by :func:`vla_adp.pruning.pi0.build_pi0_pruner` for ``vla_pruner`` on π0 (not registered in
:data:`vla_adp.pruning.registry.PRUNERS`, whose sweep runs OpenVLA-OFT).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vla_adp.pruning.pruners.vla_pruner import MODES, decayed_mean, scatter_visual, select_vla_pruner
from vla_adp.pruning.scoring import ROW_SOURCES, layer_attention_scores, score_rows
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.flops import attention_rows_flops
from vla_adp.seam.keep import KeepSet

# The forks' flag names (OpenVLA / OFT eval configs) -> our fields.
FORK_FIELDS = {"fastv_k": "k", "av_hist_w": "history", "temporal_w": "history", "vla_pruner_av_hist_w": "history",
               "av_decay": "decay", "temporal_gamma": "decay", "vla_pruner_av_decay": "decay",
               "vla_pruner_layer": "action_layer"}


@dataclass(frozen=True)
class VLAPrunerPi0Config:
    """VLA-Pruner settings for π0 / π0.5.

    Args:
        keep_ratio: ρ; each camera keeps round(ρ·n_c) (1.0 = unpruned, bit for bit).
        k: FastV's K: the attention of VLM layer K−1 gives the semantic score, the prefix is cut before K.
        action_layer: expert layer whose attention over the prefix feeds the history.
        history: window length w; also the warm-up (queries run unpruned until it is full).
        decay: γ; weight γ^age, newest entry age 0.
        attention_source: semantic rows, ``prefill`` (every prefix row) or ``last`` (the last prompt token).
        mode: ``semantic_action`` (the method), ``semantic`` or ``action`` (one score's top-k alone).
    """

    keep_ratio: float = 0.5
    k: int = 3
    action_layer: int = 9
    history: int = 3
    decay: float = 0.8
    attention_source: str = "prefill"
    mode: str = "semantic_action"

    def __post_init__(self) -> None:
        if not isinstance(self.keep_ratio, (int, float)) or not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"VLAPrunerPi0Config.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        for name, least in (("k", 1), ("action_layer", 0), ("history", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"VLAPrunerPi0Config.{name} must be an int >= {least}, got {value!r}")
        if not isinstance(self.decay, (int, float)) or not 0.0 < self.decay <= 1.0:
            raise ValueError(f"VLAPrunerPi0Config.decay must be in (0, 1], got {self.decay!r}")
        if self.attention_source not in ROW_SOURCES:
            raise ValueError(f"VLAPrunerPi0Config.attention_source must be one of {ROW_SOURCES}, "
                             f"got {self.attention_source!r}")
        if self.mode not in MODES:
            raise ValueError(f"VLAPrunerPi0Config.mode must be one of {MODES}, got {self.mode!r}")

    @property
    def score_layer(self) -> int:
        return self.k - 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAPrunerPi0Config":
        """Our field names, or the forks' (``fastv_k``, ``fastv_r`` = 1 − ρ, ``vla_pruner_layer``,
        ``av_hist_w``, ``av_decay``, ...); an unknown name is an error that lists the known ones."""
        ours, out = set(cls.__dataclass_fields__), {}
        for key, value in data.items():
            if key in ours:
                out[key] = value
            elif key in FORK_FIELDS:
                out.setdefault(FORK_FIELDS[key], value)
            elif key == "fastv_r":
                if not 0.0 <= float(value) < 1.0:
                    raise ValueError(f"fastv_r={value!r} must be in [0, 1) (it is the share of image tokens dropped)")
                out.setdefault("keep_ratio", 1.0 - float(value))
            else:
                raise ValueError(f"unknown VLA-Pruner (π0) config field {key!r}; expected one of "
                                 f"{sorted(ours | set(FORK_FIELDS) | {'fastv_r'})}")
        return cls(**out)


class VLAPrunerPi0:
    """VLA-Pruner on π0: semantic ∪ decayed action-expert attention per camera, max-min diversity."""

    name = "vla_pruner_pi0"

    def __init__(self, config: VLAPrunerPi0Config = VLAPrunerPi0Config()):
        self.config = config
        self.reset()

    def reset(self) -> None:
        """New episode: empty action history, so the warm-up starts again."""
        self._history: deque[Tensor] = deque(maxlen=self.config.history)
        self._clear_query()

    def _clear_query(self) -> None:
        self._observing = self._pruning = False
        self._semantic = self._keep = self._action_sum = None
        self._n_visual, self._reports, self._flops = 0, 0, 0.0

    # -- the Pruner protocol --------------------------------------------------------------------
    def begin(self, query: Query) -> frozenset[int]:
        self._clear_query()
        cfg = self.config
        if cfg.keep_ratio >= 1.0:
            return frozenset()
        self._observing = True
        self._n_visual = query.layout.n_visual if query.layout is not None else 0
        self._pruning = len(self._history) == cfg.history
        if not self._pruning:
            return frozenset()
        return frozenset({cfg.k} | ({cfg.score_layer} if cfg.mode != "action" else set()))

    def at_layer(self, ctx: LayerContext) -> KeepSet | None:
        if ctx.layout.n_action:
            raise ValueError("vla_pruner_pi0 reads a flow-matching expert's attention; this sequence has action "
                             "slots (OpenVLA-OFT): use the vla_pruner pruner there")
        cfg = self.config
        self._n_visual = ctx.visual.shape[1]
        if ctx.index == cfg.score_layer and cfg.mode != "action":
            rows = score_rows(ctx.layout, cfg.attention_source)
            self._semantic = layer_attention_scores(ctx, rows)
            self._flops += attention_rows_flops(ctx.shape, len(rows), ctx.layout.length)
        if ctx.index == cfg.k:
            self._keep = self._select(ctx)
            return self._keep
        return None

    def expert_layers(self) -> frozenset[int]:
        """The model reports this expert layer at every denoising step (``ExpertObserver``)."""
        return frozenset({self.config.action_layer}) if self._observing else frozenset()

    def at_expert(self, ctx) -> None:
        """One denoising step: the action rows' weights on the image keys, heads and rows averaged."""
        if ctx.index != self.config.action_layer:
            return
        seen = ctx.probs[..., ctx.layout.visual].float().mean(dim=(1, 2))  # (B, image keys this layer cached)
        cut = self._keep is not None and self.config.action_layer >= self.config.k
        row = scatter_visual(seen, self._keep if cut else None, self._n_visual)
        self._action_sum = row if self._action_sum is None else self._action_sum + row
        self._reports += 1

    def end(self, outcome: QueryOutcome) -> dict[str, Any]:
        warmup = self._observing and not self._pruning
        if self._reports:
            self._history.append((self._action_sum / self._reports).detach())
        info = {"keep_ratio": self.config.keep_ratio, "vla_pruner_warmup": warmup,
                "vla_pruner_history": len(self._history), "scoring_layer": self.config.score_layer,
                "action_layer": self.config.action_layer, "expert_reports": self._reports,
                "scoring_flops": self._flops}
        self._clear_query()
        return info

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


PRUNER = VLAPrunerPi0
CONFIG = VLAPrunerPi0Config
