"""ADP configuration: frozen dataclasses, reference JSON field names accepted as they are.

Field names of the reference code (chen7086/VLA-ADP ``prune_v2_config.json`` and the
``PruneV2GenerateConfig`` dataclass of ``run_libero_eval_prune_v2.py``, docs/reference_configs.md;
seed paper Table 14) map onto ours. A file in the reference's vocabulary means what it means there:

* fields it leaves out take the reference dataclass's defaults (``REFERENCE_DEFAULTS``: keep 0.75,
  no split, ``decision_method="avg"`` = the EMA rule, probe pass for ``qk_layer`` > 0, ...), not ours;
* every value the reference accepts means the same: ``decision_method`` other than "avg" (any case;
  "" counts as "avg") is the adjacent-extrema rule, ``delta_method`` other than "sum"/"arc_sum"/"hypot"
  is net displacement, window < 3 acts as 3, a consecutive-prune limit <= 0 forces every window to
  full vision, ``initial_state`` other than 1 acts as 0, an empty, zero-sum, wrong-length or
  unparsable split means equal weights, a keep ratio >= 1 means no pruning;
* keys it does not read are ignored with one warning that lists them;
* where the reference hangs or silently runs something else (``qk_layer`` given as a list: its loader
  stops there and keeps the defaults of every later field; a keep ratio <= 0: one token for all
  cameras, its quota loop never ends), loading refuses with an error that says so.

Our own names (``rule``, ``displacement``, ...) carry what vla-adp offers beyond the reference
(``mean`` rule, ``path``/``fk`` displacements), so no string the reference reads changes meaning.

Defaults reproduce the published numbers (paper Table 14 / §5.1): keep 0.5 (the reference dataclass
says 0.75), layer 0, split [0.4, 0.6] main:wrist, adjacent-extrema rule with window 3, "net"
displacement, third case -> 1, cold start 0, at most 3 consecutive pruned windows.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from vla_adp.seam.budget import ROUNDINGS, SELECTIONS
from vla_adp.seam.flops import LAYER_MODES, SCORING_METHODS
from vla_adp.seam.keep import POSITION_MODES

RULES = ("adjacent", "mean", "ema")
DISPLACEMENTS = ("net", "path", "fk")
SCHEDULES = ("dynamic", "static", "periodic", "random")
THIRD_CASES = ("prune", "previous")

# Reference fields that exist but change nothing in the reference code (chen7086/VLA-ADP ``prune_v2_config.json`` fields that ``run_libero_eval_prune_v2.py`` never reads).
NO_EFFECT_FIELDS = (
    "qk_debug", "qk_log_topk", "log_topk", "adjacent_variant", "adjacent_lookback", "L_eff", "min_delta_rot",
    "hysteresis_up", "hysteresis_down", "tol_equal", "task_suite_name", "random_experiment",
    "random_keep_ratio", "dynamic_ablation_enabled", "dump_episode", "dump_dir",
)
# Fields read by other parts of vla-adp: `vla-adp eval` takes num_trials_per_task from the file
# (eval/job.py), the overlay settings belong to viz/overlay.py.
ELSEWHERE_FIELDS = ("num_trials_per_task", "overlay_pruned_color", "overlay_pruned_alpha", "video_fps", "save_videos")
# Defaults of the reference's PruneV2GenerateConfig for the fields that drive pruning, in its names.
REFERENCE_DEFAULTS: dict[str, Any] = {
    "qk_keep_enabled": True, "qk_layer": 0, "qk_keep_ratio": 0.75, "qk_keep_split": None,
    "use_dynamic_visual_strategy": True, "decision_method": "avg", "adjacent_extrema_window": 3,
    "adjacent_last_state": False, "initial_state": 0, "delta_method": "net", "min_delta_pos": 0.0,
    "limit_consecutive_pruned_enabled": True, "limit_max_consecutive_pruned": 3,
}


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
        window: adjacent-extrema window τ; the reference uses max(3, window), so 0..3 all mean 3.
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
        limit_consecutive: force a full-vision window after ``max_consecutive`` pruned ones
            (``max_consecutive`` <= 0: every window runs with full vision, as in the reference).
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
        for name in ("window", "max_consecutive"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ValueError(f"GateConfig.{name} must be an int, got {getattr(self, name)!r}")
        if not isinstance(self.period, int) or self.period < 1:
            raise ValueError(f"GateConfig.period must be an int >= 1, got {self.period!r}")
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
        enabled: ``qk_keep_enabled``: the switch of the open-loop schedules (``static``: prune every
            query iff enabled). The dynamic gate overwrites it at every query from its state, as
            the reference's evaluation loop does, so it has no effect there.
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
        _choice(self, "scoring", SCORING_METHODS)
        _choice(self, "positions", POSITION_MODES)

    # -- reference JSON ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ADPConfig":
        """Our field names or the reference's (``qk_keep_ratio``, ``decision_method``, ...).

        With any reference-only name present, missing fields take ``REFERENCE_DEFAULTS`` and
        ``layer_mode="probe"`` (the reference's pass for ``qk_layer`` > 0); our names, where given
        too, win. In such a file unknown keys are ignored with one warning (the reference ignores
        what it does not read); in a file of our names only, an unknown key is an error (a typo).
        """
        data = dict(data)
        ours = {f.name for f in dataclasses.fields(cls)} - {"gate"}
        gate_ours = {f.name for f in dataclasses.fields(GateConfig)}
        reference_only = (set(REFERENCE_FIELDS) | set(NO_EFFECT_FIELDS)) - ours - gate_ours
        reference = any(key in reference_only for key in data)
        if reference:
            data = {**REFERENCE_DEFAULTS, "layer_mode": "probe", **data}
        top: dict[str, Any] = {}
        gate: dict[str, Any] = dict(data.pop("gate", {}) or {})
        given_ours = {k for k in data if k in ours or k in gate_ours}
        no_effect, unknown = [], []
        for key, value in data.items():
            if key in REFERENCE_FIELDS and not (key in ours or key in gate_ours):
                target, name, convert = REFERENCE_FIELDS[key]
                if name in given_ours:  # our name given as well: it wins
                    continue
                (gate if target == "gate" else top)[name] = convert(value)
            elif key in REFERENCE_FIELDS:  # same name in both vocabularies (initial_state, ...)
                target, name, convert = REFERENCE_FIELDS[key]
                (gate if target == "gate" else top)[name] = convert(value)
            elif key in ours:
                top[key] = value
            elif key in gate_ours:
                gate[key] = value
            elif key in NO_EFFECT_FIELDS:
                no_effect.append(key)
            elif key not in ELSEWHERE_FIELDS:
                unknown.append(key)
        if no_effect:
            warnings.warn(f"ADP config fields {no_effect}: each has no effect (the reference code never reads it)")
        if unknown and not reference:  # our vocabulary: a typo is an error
            raise ValueError(f"unknown ADP config field {unknown[0]!r}; expected one of {sorted(ours | gate_ours)} "
                             "or the reference's names")
        if unknown:
            warnings.warn(f"ADP config: ignoring unknown fields {unknown} (the reference ignores keys it does not "
                          f"read; vla-adp's own names are {sorted(ours | gate_ours)})")
        static = "_static" in top and not top.pop("_static")
        if static:
            gate.setdefault("schedule", "static")
        elif top.get("enabled") is False and gate.get("schedule", "dynamic") == "dynamic":
            warnings.warn("qk_keep_enabled=false has no effect with the dynamic gate: the reference's evaluation loop "
                          "overwrites it at every query from the gate's state (use_dynamic_visual_strategy=false "
                          "to switch pruning off)")
        return cls(**top, gate=GateConfig(**gate))


def _split(value) -> tuple[float, ...] | None:
    """The reference's ``qk_keep_split``: a list or a comma string; whatever it cannot use as per-camera
    weights (empty, zero-sum, unparsable) means equal weights there (a wrong length too, at run time)."""
    if value is None:
        return None
    if isinstance(value, str):  # "0.4,0.6": get_vla_action parses it, anything unparsable -> equal
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            warnings.warn(f"qk_keep_split {value!r} is not a comma list of numbers: equal weights, as in the reference")
            return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(f"qk_keep_split must be a list of numbers or a comma string, got {value!r} (the reference's "
                         "JSON loader fails on it and silently keeps its defaults for every later field)")
    if not value or sum(max(0.0, float(v)) for v in value) <= 0:
        warnings.warn(f"qk_keep_split {list(value)!r} has no positive weight: equal weights, as in the reference")
        return None
    return tuple(float(v) for v in value)


def _layer(value) -> int:
    if isinstance(value, (list, tuple)):
        raise ValueError(f"qk_layer must be one int, got {value!r}: the reference's JSON loader fails on a list "
                         "(int([...])), prints a warning and silently runs with its defaults for qk_layer and every "
                         "field after it, so such a file never ran the layers it names")
    return int(value)


def _ratio(value) -> float:
    r = float(value)
    if r <= 0.0:
        raise ValueError(f"qk_keep_ratio must be > 0, got {value!r}: the reference keeps max(1, round(V*ratio)) = 1 "
                         "token, and with more than one camera its per-camera quota loop never ends")
    return min(r, 1.0)  # the reference prunes only when ratio < 1


def _rule(value) -> str:
    # Reference: (str(v) or "avg").lower() == "avg" is the EMA; every other string is adjacent extrema.
    return "ema" if (str(value) or "avg").lower() == "avg" else "adjacent"


def _displacement(value) -> str:
    # Reference: "sum"/"arc_sum"/"hypot" (any case) are one path-length rule; every other string is "net".
    return "path" if (str(value) or "net").lower() in ("sum", "arc_sum", "hypot") else "net"


def _state(value) -> int:
    # Reference: the gate state is compared with 1 (qk_keep_enabled = state == 1); anything else is 0.
    return int(int(value) == 1)


REFERENCE_FIELDS: dict[str, tuple[str, str, Any]] = {
    "qk_keep_enabled": ("top", "enabled", bool),
    "qk_layer": ("top", "layer", _layer),
    "qk_keep_ratio": ("top", "keep_ratio", _ratio),
    "qk_keep_split": ("top", "split", _split),
    "random_seed": ("gate", "random_seed", int),
    "random_state_prob": ("gate", "random_state_prob", float),
    "use_dynamic_visual_strategy": ("top", "_static", bool),
    "decision_method": ("gate", "rule", _rule),
    "adjacent_extrema_window": ("gate", "window", int),
    "adjacent_last_state": ("gate", "third_case", lambda v: "previous" if v else "prune"),
    "initial_state": ("gate", "initial_state", _state),
    "delta_method": ("gate", "displacement", _displacement),
    "min_delta_pos": ("gate", "min_delta_pos", float),
    "limit_consecutive_pruned_enabled": ("gate", "limit_consecutive", bool),
    "limit_max_consecutive_pruned": ("gate", "max_consecutive", int),
}
