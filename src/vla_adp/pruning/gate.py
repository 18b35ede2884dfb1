"""The action-aware gate of ADP: per query, prune (state 1) or run with full vision (state 0).

Seed paper §4.2 (Eq. 15–18), Alg. 1 and §5.1; reference controller of chen7086/VLA-ADP
``run_libero_eval_prune_v2.py`` (docs/reference.md §4), whose behaviour is the default here.

Windows. Window i is the action chunk executed after query i. At query i > 0 window i−1 closes with
positions [eef_pos at query i−1] + eef_path (the reference records 9: query time + 8 post-step; an
empty eef_path means [eef_pos at query i−1, eef_pos now]); its displacement δ_{i−1} is appended to
the history H, the rule gives a candidate, the limiter the state. Query 0 takes ``initial_state``.

Displacements: ``net`` ‖p_last − p_first‖ (reference default); ``path`` Σ‖p_{t+1} − p_t‖ with steps
shorter than ``min_delta_pos`` counted as 0 (the reference's "sum" = "arc_sum" = "hypot"; the paper's
Eq. 15); ``fk`` the path length of the positions composed from the window's predicted chunk (Def. 4.1,
Alg. 1 step 3), which equals Σ‖v_u‖ (see kinematics.py). Fewer than 2 positions → 0.

Adjacent extrema, reference code vs Eq. 17–18. The code uses Lw = max(3, τ) and compares δ_i with
prev = the Lw−1 values before it: 1 if δ_i ≥ max(prev), else 0 if δ_i < min(prev), else the third
case. Eq. 17's U/V include δ_i itself, so with U = max(prev ∪ {δ_i}) and V = min(prev ∪ {δ_i}):

  * δ_i ≥ U ⇔ δ_i ≥ max(prev): the same test; a tie with the upper extreme prunes in both.
  * δ_i ≤ V ⇔ δ_i ≤ min(prev), but the code tests δ_i < min(prev): a tie with the lower extreme
    (δ_i = min(prev) < max(prev)) is 0 in Eq. 18 and the third case (→ 1 by default) in the code.
  * Eq. 18's third case V < δ_i < U is min(prev) < δ_i < max(prev); the code's is
    min(prev) ≤ δ_i < max(prev).
  * Equal displacements (δ_i = every prev value, e.g. an arm at rest: all 0) satisfy both of Eq. 18's
    first cases; the code takes the first, 1: a still arm is pruned (3 windows in 4 with the limiter).
  * Third case: ``third_case="prune"`` → 1 (reference code, paper §5.1); ``"previous"`` → the state
    of the window just closed (Eq. 18's s_i; the reference's ``adjacent_last_state``).

Cold start. With H = [δ_0 … δ_{i−1}] at query i, the code keeps ``initial_state`` while len(H) < Lw,
so queries 0 … Lw−1 (0, 1, 2 with the shipped τ = 3) are cold and the first rule decision compares
δ_2 with δ_0, δ_1. In the paper's 1-indexed windows that is three full-vision windows, while §5.1
says "the first two windows use full vision" and Alg. 1 sets s_1 = s_2 = 0 and then s_{i+1} = f(δ_i)
from i = 1 (overwriting s_2, with fewer than τ windows to take extrema over). The consistent reading,
s_3 = f(δ_2) over the windows there are, is ``GateConfig(cold_start=2)``; the default (``None``) is
the code's. ``mean`` and ``ema`` have no cold start beyond query 0 in either.

Mean (Eq. 16): 1 iff δ_i ≥ mean(δ_1..δ_i), the current window included, compared exactly (rational
arithmetic) so that equal displacements tie as the equation says (a float mean of [0.1]*3 exceeds
0.1). EMA (reference "avg"): m ← δ for the first window, else m ← 0.5 m + 0.5 δ; 1 iff δ ≥ m, so the
first decision is 1.

Limiter (Alg. 1 lines 5–6; reference ``limit_consecutive_pruned_*``): streak counts consecutive
pruned queries (query 0 included, so it starts at 1 with initial_state 1); a candidate 1 at streak ≥
max becomes 0 and resets the streak. It runs after every decision of the dynamic schedule from
query 1 on, cold start included, as in the reference (query 0 takes initial_state as it is, even
with max ≤ 0, which forces every later query to full vision). Alg. 1's "consec ≥ 3 → s ← 0" gives the same states.

Ablation schedules (no motion input, no limiter; the reference has only ``static``). Table 3a at keep
0.5 (Table 7: 7.91 T per query full, 4.55 T pruned): ADP's 6.43 T and ρ^avg 0.22 mean a pruned share
γ ≈ 0.44; "w/o D" 6.23 T, ρ^avg 0.25 mean γ = 0.5 (= ½·4.55 + ½·7.91); "w/o D + PS" 4.55 T, ρ^avg
0.50 mean γ = 1, the always-pruned cost. The numbers therefore fit static pruning for "w/o D + PS"
and a half-pruned schedule (periodic, or random with Table 14's p = 0.5) for "w/o D", the reverse of
the labels. We implement the schedules by their names: ``static`` prunes every query (γ = 1),
``periodic`` alternates phases of ``period`` queries starting with ``initial_state`` (γ = ½),
``random`` prunes with probability p from a generator seeded by (``random_seed``, query index), so
every episode, worker and resumed run draws the same pattern.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

from vla_adp.seam.context import Query
from vla_adp.pruning.config import GateConfig
from vla_adp.pruning.kinematics import compose_chunk, rotvec_to_matrix

REASONS = ("cold_start", "rule", "limit", "schedule")


# -- displacements ------------------------------------------------------------------------------
def _positions(positions) -> np.ndarray:
    p = np.asarray(positions, dtype=np.float64)
    p = p.reshape(0, 3) if p.size == 0 else p
    if p.ndim != 2 or p.shape[1] != 3 or not np.isfinite(p).all():
        raise ValueError(f"positions must be (n, 3) finite numbers, got shape {p.shape}")
    return p


def net_displacement(positions) -> float:
    """‖p_last − p_first‖₂ of (n, 3) positions; 0 for fewer than 2 (reference "net")."""
    p = _positions(positions)
    return 0.0 if len(p) < 2 else float(np.linalg.norm(p[-1] - p[0]))


def path_length(positions, min_delta_pos: float = 0.0) -> float:
    """Σ‖p_{t+1} − p_t‖₂ with steps shorter than ``min_delta_pos`` counted as 0 (Eq. 15).

    The reference's "sum" / "arc_sum" / "hypot"; 0 for fewer than 2 positions.
    """
    p = _positions(positions)
    if len(p) < 2:
        return 0.0
    steps = np.linalg.norm(p[1:] - p[:-1], axis=1)
    return float(np.sum(np.where(steps < min_delta_pos, 0.0, steps)))


def fk_displacement(actions, pos0=None, rot0=None, min_delta_pos: float = 0.0) -> float:
    """Path length of the positions composed from one chunk of delta actions (Def. 4.1 + Eq. 15).

    Args:
        actions: (chunk, >=6) un-normalised actions.
        pos0: start position (3,); ``None`` = origin (the path length does not depend on it).
        rot0: start orientation (3, 3); ``None`` = identity (nor on this).
        min_delta_pos: steps shorter than this count as 0.
    """
    start = np.zeros(3) if pos0 is None else pos0
    return path_length(compose_chunk(start, rot0, actions), min_delta_pos)


# -- decision rules -----------------------------------------------------------------------------
def adjacent_span(window: int) -> int:
    """Lw: displacements the extrema rule looks at, δ_i included (reference floor of 3)."""
    return max(3, window)


def adjacent_rule(d: float, prev: list[float], current: int, third_case: str) -> int:
    """Adjacent-extrema rule as the reference code evaluates Eq. 17–18 (see the module docstring).

    Args:
        d: δ_i, the displacement of the window just closed.
        prev: the (non-empty) displacements before it within the span.
        current: state of the window just closed (used by ``third_case="previous"``).
        third_case: ``"prune"`` → 1, ``"previous"`` → ``current``.
    """
    if d >= max(prev):
        return 1
    if d < min(prev):
        return 0
    return current if third_case == "previous" else 1


def mean_rule(d: float, history: list[float]) -> tuple[int, float]:
    """Eq. 16: (1 iff δ_i ≥ mean of ``history`` (δ_i included), that mean), compared exactly."""
    total = sum(map(Fraction, history), Fraction(0))
    return int(len(history) * Fraction(d) >= total), float(total / len(history))


def ema_update(m: float | None, d: float) -> float:
    """Reference "avg": m ← d for the first window, else 0.5 m + 0.5 d."""
    return d if m is None else 0.5 * m + 0.5 * d


def ema_rule(d: float, m: float) -> int:
    """1 iff δ_i ≥ the EMA updated with it (⇔ δ_i ≥ the EMA before it)."""
    return int(d >= m)


def limit_streak(candidate: int, streak: int, max_consecutive: int | None) -> tuple[int, int, bool]:
    """Consecutive-pruned limiter: (state, new streak, forced).

    ``max_consecutive=None`` only counts the streak.
    """
    if candidate == 0:
        return 0, 0, False
    if max_consecutive is not None and streak >= max_consecutive:
        return 0, 0, True
    return 1, streak + 1, False


# -- ablation schedules -------------------------------------------------------------------------
def periodic_state(index: int, period: int, initial_state: int) -> int:
    """Phases of ``period`` queries, alternating, the first in ``initial_state``."""
    return initial_state ^ ((index // period) % 2)


def random_state(index: int, seed: int, prob: float) -> int:
    """1 with probability ``prob``, drawn from a generator seeded by (seed, query index)."""
    return int(np.random.default_rng([seed, index]).random() < prob)


def schedule_state(cfg: GateConfig, index: int) -> int:
    """State of query ``index`` under an open-loop schedule (``static``/``periodic``/``random``)."""
    if cfg.schedule == "static":
        return 1
    if cfg.schedule == "periodic":
        return periodic_state(index, cfg.period, cfg.initial_state)
    if cfg.schedule == "random":
        return random_state(index, cfg.random_seed, cfg.random_state_prob)
    raise ValueError(f"schedule_state needs an open-loop schedule, got {cfg.schedule!r}")


def cold_start_length(cfg: GateConfig) -> int:
    """Queries that take ``initial_state`` (reference: Lw for adjacent, 1 for mean/ema)."""
    if cfg.cold_start is not None:
        return cfg.cold_start
    return adjacent_span(cfg.window) if cfg.rule == "adjacent" else 1


# -- the gate -----------------------------------------------------------------------------------
def _vec3(value, what: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.shape != (3,) or not np.isfinite(v).all():
        raise ValueError(f"{what} must be 3 finite numbers, got {value!r}")
    return v


class ActionAwareGate:
    """Per-episode history of the gate; every computation is one of the pure functions above.

    Call ``decide(query)`` once per query in order (``query.index`` 0, 1, …), ``observe_actions``
    after it when the displacement is ``fk``, and ``reset()`` at every new episode.
    """

    def __init__(self, cfg: GateConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        """Start a new episode: empty history, state ``initial_state``, streak 0."""
        self._index = 0
        self._deltas: list[float] = []
        self._ema: float | None = None
        self._state = self.cfg.initial_state
        self._streak = 0
        self._pose: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        self._actions: np.ndarray | None = None
        self._info: dict[str, Any] = {}

    def decide(self, query: Query) -> int:
        """State of this query: 1 = prune, 0 = full vision."""
        if query.index != self._index:
            raise ValueError(f"gate expected query index {self._index}, got {query.index}; "
                             "decide() must see every query of an episode in order, reset() between episodes")
        dynamic = self.cfg.schedule == "dynamic"
        if dynamic and query.eef_pos is None:
            raise ValueError("the dynamic gate needs the end-effector position (Query.eef_pos) at every query; "
                             "this platform/observation has none: use schedule 'static', 'periodic' or 'random'")
        pose = self._read_pose(query)
        d = self._close_window(query, pose[0], dynamic) if self._index > 0 else None
        if dynamic:
            candidate, reason, thresholds = self._dynamic(d)
        else:
            candidate, reason, thresholds = schedule_state(self.cfg, self._index), "schedule", {}
        limit = self.cfg.max_consecutive if dynamic and self.cfg.limit_consecutive else None
        if dynamic and self._index == 0:  # the reference starts in initial_state, limiter or not
            self._state, self._streak, forced = candidate, candidate, False
        else:
            self._state, self._streak, forced = limit_streak(candidate, self._streak, limit)
        self._info = {"gate_state": self._state, "displacement": d, "gate_reason": "limit" if forced else reason,
                      "gate_streak": self._streak, "gate_upper": None, "gate_lower": None, "gate_mean": None,
                      **thresholds}
        self._pose, self._index = pose, self._index + 1
        return self._state

    def observe_actions(self, actions: np.ndarray) -> None:
        """The (chunk, action_dim) un-normalised chunk predicted at this query (``fk`` needs it)."""
        a = np.asarray(actions, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1:
            raise ValueError(f"actions must be a (chunk, action_dim) array, got shape {a.shape}")
        if self.cfg.displacement == "fk":
            if a.shape[1] < 6 or not np.isfinite(a[:, :6]).all():
                raise ValueError(f"fk displacement needs finite (chunk, >=6) delta actions, got shape {a.shape}")
            self._actions = a.copy()

    def info(self) -> dict[str, Any]:
        """What the last ``decide`` did (JSON-serialisable; see REASONS for ``gate_reason``)."""
        return dict(self._info)

    # -- steps of decide ------------------------------------------------------------------------
    def _read_pose(self, query: Query) -> tuple[np.ndarray | None, np.ndarray | None]:
        if query.eef_pos is None:
            return None, None
        pos = _vec3(query.eef_pos, "Query.eef_pos")
        rot = None if query.eef_rotvec is None else rotvec_to_matrix(_vec3(query.eef_rotvec, "Query.eef_rotvec"))
        return pos, rot

    def _close_window(self, query: Query, pos: np.ndarray | None, dynamic: bool) -> float | None:
        """δ of the window opened at the previous query; ``None`` where an open-loop schedule lacks input."""
        prev_pos, prev_rot = self._pose
        if self.cfg.displacement == "fk":
            actions, self._actions = self._actions, None
            if actions is None:
                if dynamic:
                    raise ValueError("fk displacement needs observe_actions(chunk) after every query; "
                                     f"none was given after query {self._index - 1}")
                return None
            return fk_displacement(actions, prev_pos, prev_rot, self.cfg.min_delta_pos)
        if prev_pos is None or pos is None:
            return None
        path = [_vec3(p, f"Query.eef_path[{i}]") for i, p in enumerate(query.eef_path)]
        window = [prev_pos, *path] if path else [prev_pos, pos]
        if self.cfg.displacement == "net":
            return net_displacement(window)
        return path_length(window, self.cfg.min_delta_pos)

    def _dynamic(self, d: float | None) -> tuple[int, str, dict[str, float]]:
        if d is None:
            return self.cfg.initial_state, "cold_start", {}
        self._deltas.append(d)
        self._ema = ema_update(self._ema, d)
        candidate, thresholds = self._rule(d)
        if len(self._deltas) < cold_start_length(self.cfg) or candidate is None:
            return self.cfg.initial_state, "cold_start", {}
        return candidate, "rule", thresholds

    def _rule(self, d: float) -> tuple[int | None, dict[str, float]]:
        if self.cfg.rule == "ema":
            return ema_rule(d, self._ema), {"gate_mean": self._ema}
        if self.cfg.rule == "mean":
            state, mean = mean_rule(d, self._deltas)
            return state, {"gate_mean": mean}
        prev = self._deltas[-adjacent_span(self.cfg.window):-1]
        if not prev:
            return None, {}
        return (adjacent_rule(d, prev, self._state, self.cfg.third_case),
                {"gate_upper": max(prev), "gate_lower": min(prev)})
