"""Action-aware Dynamic Pruning (seed paper §4, Algorithm 1; reference chen7086/VLA-ADP, docs/reference.md §4).

Per query: the :class:`~vla_adp.pruning.gate.ActionAwareGate` decides from the end-effector motion
of the previous action chunk whether this query prunes (state 1) or keeps full vision (state 0).
When it prunes, the text-driven score Φ (Eq. 7–9, :mod:`~vla_adp.pruning.scoring`) at layer ℓ
ranks the visual tokens, each camera keeps its quota of the top-k (Eq. 10–12,
:mod:`~vla_adp.pruning.select`), and the shorter sequence continues with contiguous positions
(the reference rebuilds the sequence from scratch).

Where scoring happens for ℓ > 0 (``layer_mode``):
* ``inline`` (default here): layers 0..ℓ-1 run once on the full sequence, the cut happens before
  layer ℓ — one LLM pass.
* ``probe`` (reference): an extra pass through layers 0..ℓ-1 over the sequence *without* the proprio
  token (as the reference builds it), Φ from its layer-ℓ input, then the cut before layer 0 and a
  full pass on the shorter sequence. Use it to reproduce the reference's numbers at ℓ > 0.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from vla_adp.pruning.config import ADPConfig
from vla_adp.pruning.gate import ActionAwareGate
from vla_adp.pruning.scoring import layer_text_vision_scores, text_vision_scores
from vla_adp.pruning.select import select_per_view
from vla_adp.seam.budget import keep_count, view_quotas
from vla_adp.seam.context import LayerContext, Query, QueryOutcome
from vla_adp.seam.flops import query_scoring_flops
from vla_adp.seam.keep import KeepSet


class ADPPruner:
    """Action-aware Dynamic Pruning: text-driven per-camera top-k, switched by end-effector motion."""

    name = "adp"

    def __init__(self, config: ADPConfig = ADPConfig()):
        self.config = config
        self.gate = ActionAwareGate(config.gate)
        self.reset()

    @property
    def prune_layer(self) -> int:
        return 0 if self.config.layer_mode == "probe" else self.config.layer

    def reset(self) -> None:
        self.gate.reset()
        self._generator = torch.Generator().manual_seed(self.config.seed)
        self._state = 0
        self._scoring_flops = 0.0

    def begin(self, query: Query) -> frozenset[int]:
        state = self.gate.decide(query)
        # The dynamic gate overwrites qk_keep_enabled at every query (reference eval loop); the
        # open-loop schedules honour it.
        enabled = self.config.enabled or self.config.gate.schedule == "dynamic"
        self._state = int(state and enabled)
        self._scoring_flops = 0.0
        prunes = self._state and self.config.keep_ratio < 1.0
        return frozenset({self.prune_layer}) if prunes else frozenset()

    def at_layer(self, ctx: LayerContext) -> KeepSet:
        cfg, layout = self.config, ctx.layout
        k = keep_count(layout.n_visual, cfg.keep_ratio, cfg.rounding)
        quotas = view_quotas(k, layout.views, cfg.split)
        if cfg.selection == "random":
            scores = torch.zeros(ctx.hidden.shape[0], layout.n_visual)
        else:
            scores = self.scores(ctx)
            self._scoring_flops = query_scoring_flops(ctx.shape, layout, cfg.layer, cfg.layer_mode, cfg.scoring)
        keep_set = select_per_view(scores, layout.views, quotas, cfg.selection, self._generator, cfg.order)
        return keep_set.with_positions(cfg.positions)

    def scores(self, ctx: LayerContext) -> Tensor:
        """Φ (B, V) at the configured layer (Eq. 9)."""
        if self.config.layer == ctx.index:
            return layer_text_vision_scores(ctx, self.config.scoring)
        return self._probe_scores(ctx)

    def _probe_scores(self, ctx: LayerContext) -> Tensor:
        """Reference probe pass: layers 0..ℓ-1 over [BOS, visual, prompt, slots, </s>] (no proprio)."""
        layout = ctx.layout
        keep_rows = [i for i in range(layout.length) if not layout.proprio.start <= i < layout.proprio.stop]
        x = ctx.hidden[:, keep_rows]
        pos = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        probe = ctx.run_to(self.config.layer, x, pos, dataclasses.replace(layout, n_proprio=0))
        proj = probe.projections()
        return text_vision_scores(probe.normed(), proj.q, proj.k, proj.n_heads, proj.n_kv_heads, probe.layout,
                                  self.config.scoring)

    def end(self, outcome: QueryOutcome) -> dict:
        self.gate.observe_actions(outcome.actions)
        return {**self.gate.info(), "gate_state": self._state, "keep_ratio": self.config.keep_ratio,
                "scoring_layer": self.config.layer, "scoring_flops": self._scoring_flops}


PRUNER = ADPPruner
CONFIG = ADPConfig
