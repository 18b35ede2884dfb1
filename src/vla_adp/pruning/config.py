"""ADP configuration: frozen dataclasses, reference JSON field names accepted as they are.

Field names of the reference code (chen7086/VLA-ADP ``prune_v2_config.json`` and its eval
dataclass, spec §6.4; seed paper Table 14) map onto ours; fields the reference accepts but never
reads load with a warning that says they have no effect.

Defaults reproduce the published numbers (paper Table 14 / §5.1): keep 0.5 (the reference dataclass
says 0.75), layer 0, split [0.4, 0.6] main:wrist, adjacent-extrema rule with window 3, "net"
displacement, third case -> 1, cold start 0, at most 3 consecutive pruned windows.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

ROUNDINGS = ("round", "ceil", "floor")
SELECTIONS = ("top", "inverse", "random")
LAYER_MODES = ("inline", "probe")
RULES = ("adjacent", "mean", "ema")
DISPLACEMENTS = ("net", "path", "fk")
SCHEDULES = ("dynamic", "static", "periodic", "random")
THIRD_CASES = ("prune", "previous")

# Reference fields that exist but change nothing in the reference code (spec §6.4, §6.6).
NO_EFFECT_FIELDS = (
    "qk_debug", "qk_log_topk", "log_topk", "adjacent_variant", "adjacent_lookback", "L_eff", "min_delta_rot",
    "hysteresis_up", "hysteresis_down", "tol_equal", "task_suite_name", "random_experiment",
    "random_keep_ratio", "dynamic_ablation_enabled", "dump_episode", "dump_dir",
)
# Evaluation/visualisation fields that belong to other configs, accepted here and ignored.
ELSEWHERE_FIELDS = ("num_trials_per_task", "overlay_pruned_color", "overlay_pruned_alpha", "video_fps", "save_videos")


def _choice(obj, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{type(obj).__name__}.{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class GateConfig:
    """The action-aware gate (paper §4.2, Alg. 1; reference ``run_libero_eval_prune_v2.py``).

    Args:
        schedule: ``dynamic`` (the gate), ``static`` (prune every query: "ADP w/o D"),
            ``periodic`` (alternate phases of ``period`` queries, the first in ``initial_state``:
            "w/o D + PS"), ``random`` (state 1 with probability ``random_state_prob``, drawn per
            (``random_seed``, query index)). Open-loop schedules skip the limiter; see gate.py for
            what Table 3a's numbers imply about them.
        rule: ``adjacent`` extrema (Eq. 17–18), ``mean`` (Eq. 16, running mean incl. the current
            window), ``ema`` (the reference's "avg": m <- 0.5 m + 0.5 d).
        window: adjacent-extrema window τ; the reference uses max(3, window).
        third_case: between the extrema: ``prune`` (state 1: reference code and paper §5.1) or
            ``previous`` (keep the state: Eq. 18 as printed).
        initial_state: state of the cold-start queries (query 0 always; see ``cold_start``).
        cold_start: queries at the start of an episode that take ``initial_state`` whatever the
            rule says; ``None`` = the reference code: max(3, window) for ``adjacent`` (queries 0, 1,
            2 with the shipped window 3), 1 for ``mean``/``ema``. The paper's "two-window cold
            start" (§5.1, Alg. 1) is ``cold_start=2`` (extrema then over the windows there are).
        displacement: ``net`` ‖p_last − p_first‖ (reference default), ``path`` Σ‖p_{t+1} − p_t‖ over
            recorded steps with steps below ``min_delta_pos`` dropped (reference "sum"/"arc_sum"/
            "hypot"), ``fk`` path length of the chunk's predicted deltas composed in the body frame
            (paper Def. 4.1 + Eq. 15).
        limit_consecutive: force a full-vision window after ``max_consecutive`` pruned ones.
        period: windows per phase of the periodic schedule.
    """

    schedule: str = "dynamic"
    rule: str = "adjacent"
    window: int = 3
    third_case: str = "prune"
    initial_state: int = 0
    cold_start: int | None = None
    displacement: str = "net"
    min_delta_pos: float = 0.0
    limit_consecutive: bool = True
    max_consecutive: int = 3
    period: int = 1
    random_state_prob: float = 0.5
    random_seed: int = 42

    def __post_init__(self) -> None:
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "rule", RULES)
        _choice(self, "third_case", THIRD_CASES)
        _choice(self, "displacement", DISPLACEMENTS)
        if self.initial_state not in (0, 1):
            raise ValueError(f"GateConfig.initial_state must be 0 or 1, got {self.initial_state!r}")
        for name in ("window", "max_consecutive", "period"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"GateConfig.{name} must be an int >= 1, got {getattr(self, name)!r}")
        if self.cold_start is not None and (not isinstance(self.cold_start, int) or self.cold_start < 1):
            raise ValueError(f"GateConfig.cold_start must be None or an int >= 1, got {self.cold_start!r}")
        if self.min_delta_pos < 0:
            raise ValueError(f"GateConfig.min_delta_pos must be >= 0, got {self.min_delta_pos!r}")
        if not isinstance(self.random_seed, int) or self.random_seed < 0:
            raise ValueError(f"GateConfig.random_seed must be an int >= 0, got {self.random_seed!r}")
        if not 0.0 <= self.random_state_prob <= 1.0:
            raise ValueError(f"GateConfig.random_state_prob must be in [0, 1], got {self.random_state_prob!r}")


@dataclass(frozen=True)
class ADPConfig:
    """Text-driven scoring and selection (paper §4.1, Eq. 7–12) plus the gate.

    Args:
        keep_ratio: ρ, share of visual tokens kept in a pruned query (0, 1].
        layer: ℓ, the decoder layer whose input_layernorm/q_proj/k_proj score the tokens.
        split: per-camera weights of the budget (main, wrist, ...); ``None`` = equal.
        rounding: k from ρ·L_vis by ``round`` (reference code, banker's rounding), ``ceil`` (the
            paper's tables) or ``floor`` (the paper's Eq. 10).
        selection: ``top`` (most relevant), ``inverse`` (least relevant, Table 4), ``random``.
        layer_mode: for ℓ > 0: ``inline`` runs layers 0..ℓ-1 once on the full sequence and prunes
            there; ``probe`` reproduces the reference's extra full pass (without the proprio token)
            and prunes before layer 0.
        positions: ``contiguous`` (reference ADP) or ``original`` position ids after the cut.
        enabled: prune at all (``qk_keep_enabled``); with the static schedule it is the only switch.
        seed: seed of the ``random`` selection (re-seeded every episode).
        order: ``position`` keeps kept tokens in original order; ``score`` orders each view's kept
            tokens by descending score, as the reference does for a single camera (its global
            ``topk(sorted=True)``); with contiguous positions the order changes the output.
        scoring: ``fused`` (mean over text first; same Φ, less work), ``exact`` (reference matrix) or
            ``folded`` (default; W_K folded into the mean query as well: no K projection of the visual
            tokens). All three are the same Φ in exact arithmetic.
    """

    keep_ratio: float = 0.5
    layer: int = 0
    split: tuple[float, ...] | None = (0.4, 0.6)
    rounding: str = "round"
    selection: str = "top"
    layer_mode: str = "inline"
    positions: str = "contiguous"
    enabled: bool = True
    seed: int = 42
    order: str = "position"
    scoring: str = "folded"
    gate: GateConfig = field(default_factory=GateConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.keep_ratio, (int, float)) or not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"ADPConfig.keep_ratio must be in (0, 1], got {self.keep_ratio!r}")
        if not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"ADPConfig.layer must be an int >= 0, got {self.layer!r}")
        if self.split is not None:
            object.__setattr__(self, "split", tuple(float(w) for w in self.split))
            if not self.split or sum(max(0.0, w) for w in self.split) <= 0:
                raise ValueError(f"ADPConfig.split needs a positive weight, got {self.split!r}")
        _choice(self, "rounding", ROUNDINGS)
        _choice(self, "selection", SELECTIONS)
        _choice(self, "layer_mode", LAYER_MODES)
        _choice(self, "order", ("position", "score"))
        _choice(self, "scoring", ("fused", "exact", "folded"))
        if self.positions not in ("contiguous", "original"):
            raise ValueError(f"ADPConfig.positions must be 'contiguous' or 'original', got {self.positions!r}")

    # -- reference JSON ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ADPConfig":
        """Our field names or the reference's (``qk_keep_ratio``, ``decision_method``, ...)."""
        data = dict(data)
        ours = {f.name for f in dataclasses.fields(cls)} - {"gate"}
        gate_ours = {f.name for f in dataclasses.fields(GateConfig)}
        top: dict[str, Any] = {}
        gate: dict[str, Any] = dict(data.pop("gate", {}) or {})
        for key, value in data.items():
            if key in REFERENCE_FIELDS:
                target, name, convert = REFERENCE_FIELDS[key]
                (gate if target == "gate" else top)[name] = convert(value)
            elif key in ours:
                top[key] = value
            elif key in gate_ours:
                gate[key] = value
            elif key in NO_EFFECT_FIELDS:
                warnings.warn(f"ADP config field {key!r} has no effect (the reference code never reads it)")
            elif key in ELSEWHERE_FIELDS:
                warnings.warn(f"ADP config field {key!r} belongs to the evaluation/visualisation settings; ignored here")
            else:
                raise ValueError(f"unknown ADP config field {key!r}")
        if "_static" in top:
            if not top.pop("_static"):
                gate.setdefault("schedule", "static")
        return cls(**top, gate=GateConfig(**gate))

    def to_reference_dict(self) -> dict[str, Any]:
        """The same settings under the reference JSON names (for `prune_v2_config.json`-style files)."""
        g = self.gate
        return {
            "qk_keep_enabled": self.enabled, "qk_layer": self.layer, "qk_keep_ratio": self.keep_ratio,
            "qk_keep_split": list(self.split) if self.split else None,
            "use_dynamic_visual_strategy": g.schedule == "dynamic",
            "decision_method": {"ema": "avg"}.get(g.rule, g.rule), "adjacent_extrema_window": g.window,
            "adjacent_last_state": g.third_case == "previous", "initial_state": g.initial_state,
            "delta_method": {"path": "sum"}.get(g.displacement, g.displacement), "min_delta_pos": g.min_delta_pos,
            "limit_consecutive_pruned_enabled": g.limit_consecutive,
            "limit_max_consecutive_pruned": g.max_consecutive,
        }


def _split(value) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # the reference accepts "0.4,0.6"
        return tuple(float(v) for v in value.split(",") if v.strip())
    return tuple(float(v) for v in value)


def _rule(value: str) -> str:
    # Reference: "avg" (case-insensitive) is the EMA; any other string falls to the adjacent-extrema branch.
    return {"avg": "ema", "ema": "ema", "mean": "mean"}.get(str(value or "").lower(), "adjacent")


def _displacement(value: str) -> str:
    # Reference: "sum"/"arc_sum"/"hypot" (case-insensitive) are one path-length rule; anything else is "net".
    names = {"sum": "path", "arc_sum": "path", "hypot": "path", "path": "path", "fk": "fk"}
    return names.get(str(value or "").lower(), "net")


REFERENCE_FIELDS: dict[str, tuple[str, str, Any]] = {
    "qk_keep_enabled": ("top", "enabled", bool),
    "qk_layer": ("top", "layer", int),
    "qk_keep_ratio": ("top", "keep_ratio", float),
    "qk_keep_split": ("top", "split", _split),
    "random_seed": ("gate", "random_seed", int),
    "random_state_prob": ("gate", "random_state_prob", float),
    "use_dynamic_visual_strategy": ("top", "_static", bool),
    "decision_method": ("gate", "rule", _rule),
    "adjacent_extrema_window": ("gate", "window", int),
    "adjacent_last_state": ("gate", "third_case", lambda v: "previous" if v else "prune"),
    "initial_state": ("gate", "initial_state", int),
    "delta_method": ("gate", "displacement", _displacement),
    "min_delta_pos": ("gate", "min_delta_pos", float),
    "limit_consecutive_pruned_enabled": ("gate", "limit_consecutive", bool),
    "limit_max_consecutive_pruned": ("gate", "max_consecutive", int),
}
