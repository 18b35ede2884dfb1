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

Shared with the OpenVLA variant (:mod:`vla_adp.pruning.pruners.vla_pruner_openvla`, which shares the
OFT one's): the config fields and their checks (FastV's ``layer`` K: attention of K−1, cut before K;
the forks' ``fastv_k`` read from config files), the warm-up (the first w queries of an episode run
unpruned and only fill the history), the semantic score and the cut, the per-camera budget
k_c = round(ρ·n_c), the union + greedy max-min cosine diversity on the projector outputs (here the
SigLIP tokens after the projector), w = 3, γ = 0.8 (newest 1.0), a token pruned at query t scoring 0
on the action side at t+1 (the action rows' averaging and scatter), original RoPE positions.

Choices of this transfer (no reference code exists): ``layer = 3`` as the OpenVLA fork, ``action_layer``
9 of π0's 18 expert layers (the forks read layer 15 of 32: mid-depth), semantic rows ``prefill``
(every real prefix token, as the OFT fork's bidirectional prefill) or ``last`` (the last prompt
token). The expert's weights come from the attention the model computes anyway (eager softmax), so
only the semantic rows cost extra FLOPs (``scoring_flops``).

Built by :func:`vla_adp.pruning.pi0.build_pi0_pruner` for ``vla_pruner`` on π0 (not registered in
:data:`vla_adp.pruning.registry.PRUNERS`, whose sweep runs OpenVLA-OFT).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from vla_adp.pruning.pruners.vla_pruner_openvla import FORK_FIELDS, VLAPrunerOpenVLA, VLAPrunerOpenVLAConfig
from vla_adp.seam.context import LayerContext, Query
from vla_adp.seam.keep import KeepSet


@dataclass(frozen=True)
class VLAPrunerPi0Config(VLAPrunerOpenVLAConfig):
    """VLA-Pruner settings for π0 / π0.5: the OpenVLA variant's fields, with π0's defaults.

    Args:
        keep_ratio: ρ; each camera keeps round(ρ·n_c) (1.0 = unpruned, bit for bit).
        layer: FastV's K: the attention of VLM layer K−1 gives the semantic score, the prefix is cut
            before K (the forks' ``fastv_k``).
        action_layer: expert layer whose attention over the prefix feeds the history (9 of 18).
        history: window length w; also the warm-up (queries run unpruned until it is full).
        decay: γ; weight γ^age, newest entry age 0.
        attention_source: semantic rows, ``prefill`` (every prefix row) or ``last`` (the last prompt token).
        mode: ``semantic_action`` (the method), ``semantic`` or ``action`` (one score's top-k alone).
    """

    action_layer: int = 9
    attention_source: str = "prefill"
    # the OFT fork's flag names too (its eval configs are what users carry over)
    fork_fields: ClassVar[dict[str, str]] = {**FORK_FIELDS, "vla_pruner_av_hist_w": "history",
                                             "vla_pruner_av_decay": "decay", "vla_pruner_layer": "action_layer"}
    model: ClassVar[str] = "π0"


class VLAPrunerPi0(VLAPrunerOpenVLA):
    """VLA-Pruner on π0: semantic ∪ decayed action-expert attention per camera, max-min diversity.

    The OpenVLA variant's warm-up, selection and action-row bookkeeping; the action rows are the action
    expert's at every denoising step instead of the decode steps.
    """

    name = "vla_pruner_pi0"

    def __init__(self, config: VLAPrunerPi0Config = VLAPrunerPi0Config()):
        super().__init__(config)

    # -- the Pruner protocol --------------------------------------------------------------------
    def begin(self, query: Query) -> frozenset[int]:
        """Prefix hooks only when pruning (the action layer is an expert layer: :meth:`expert_layers`)."""
        self._clear_query()
        cfg = self.config
        if cfg.keep_ratio >= 1.0:
            return frozenset()
        self._observing = True
        self._n_visual = query.layout.n_visual if query.layout is not None else 0
        self._pruning = len(self._history) == cfg.history
        if not self._pruning:
            return frozenset()
        return frozenset({cfg.cut_layer} | ({cfg.score_layer} if cfg.mode != "action" else set()))

    def at_layer(self, ctx: LayerContext) -> KeepSet | None:
        if ctx.layout.n_action:
            raise ValueError("vla_pruner_pi0 reads a flow-matching expert's attention; this sequence has action "
                             "slots (OpenVLA-OFT): use the vla_pruner pruner there")
        self._n_visual = ctx.visual.shape[1]
        return self._score_and_cut(ctx)

    def decode_layers(self) -> frozenset[int]:
        return frozenset()  # no decode steps: the expert reports instead

    def expert_layers(self) -> frozenset[int]:
        """The model reports this expert layer at every denoising step (``ExpertObserver``)."""
        return frozenset({self.config.action_layer}) if self._observing else frozenset()

    def at_expert(self, ctx) -> None:
        """One denoising step: the action rows' weights on the image keys, heads and rows averaged."""
        if ctx.index == self.config.action_layer:
            self._add_action_row(ctx.probs, ctx.layout)


PRUNER = VLAPrunerPi0
CONFIG = VLAPrunerPi0Config
