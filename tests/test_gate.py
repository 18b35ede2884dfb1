"""The action-aware gate: hand-computed sequences per rule and edge case, the ablation schedules, and
parity with an independent port of the reference controller (docs/reference.md §4) over random trajectories."""

from __future__ import annotations

import json
import warnings
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vla_adp.seam.context import Query
from vla_adp.pruning.config import ADPConfig, GateConfig
from vla_adp.pruning.gate import (
    ActionAwareGate,
    fk_displacement,
    mean_rule,
    net_displacement,
    path_length,
)
from vla_adp.seam.layout import TokenLayout
from vla_adp.pruning.registry import read_config_file

LAYOUT = TokenLayout((256, 256), n_prompt=12, n_action=56)
ROOT = Path(__file__).resolve().parents[1]


def q(index, pos, path=(), rotvec=None) -> Query:
    return Query(index, LAYOUT, None if pos is None else np.asarray(pos, float), rotvec, [np.asarray(p, float) for p in path])


def run(cfg: GateConfig, deltas, gate=None):
    """Drive a gate along x so that window i has net displacement deltas[i] (exact for dyadic values)."""
    gate = gate or ActionAwareGate(cfg)
    xs = np.concatenate([[0.0], np.cumsum(deltas)])
    states, infos = [], []
    for i, x in enumerate(xs):
        states.append(gate.decide(q(i, [x, 0.0, 0.0])))
        infos.append(gate.info())
    return states, infos


# -- displacements ----------------------------------------------------------------------------
def test_displacements_by_hand():
    pts = [[0, 0, 0], [3, 4, 0], [3, 4, 0.005], [0, 0, 0.005]]
    assert net_displacement(pts) == pytest.approx(0.005)
    assert path_length(pts) == pytest.approx(10.005)
    assert path_length(pts, min_delta_pos=0.01) == pytest.approx(10.0)  # the 5 mm step counts as 0
    for f in (net_displacement, path_length):
        assert f([]) == 0.0 and f([[1, 2, 3]]) == 0.0


def test_displacements_reject_bad_positions():
    with pytest.raises(ValueError, match="positions must be"):
        net_displacement([[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="positions must be"):
        path_length([[0, 0, 0], [np.nan, 0, 0]])


def test_fk_displacement_is_sum_of_translation_norms():
    acts = np.array([[0.3, 0.4, 0.0, 0.5, -0.2, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0]])
    assert fk_displacement(acts) == pytest.approx(1.5)
    assert fk_displacement(acts, min_delta_pos=0.6) == pytest.approx(1.0)


# -- adjacent extrema (reference defaults) -------------------------------------------------------
def test_cold_start_then_rule_and_limit():
    states, infos = run(GateConfig(), [1, 2, 3, 4, 5, 6, 7, 0.5])
    assert states == [0, 0, 0, 1, 1, 1, 0, 1, 0]
    assert [i["gate_reason"] for i in infos] == ["cold_start"] * 3 + ["rule"] * 3 + ["limit", "rule", "rule"]
    assert [i["displacement"] for i in infos] == [None, 1, 2, 3, 4, 5, 6, 7, 0.5]
    assert [i["gate_streak"] for i in infos] == [0, 0, 0, 1, 2, 3, 0, 1, 0]
    assert (infos[3]["gate_upper"], infos[3]["gate_lower"]) == (2, 1)  # δ_2 = 3 vs prev (δ_0, δ_1)
    assert infos[0]["gate_upper"] is None and infos[2]["gate_mean"] is None
    json.dumps(infos)


def test_ties_with_the_extrema():
    # q3: δ=4 ties the upper extreme -> 1 (Eq. 18 agrees); q4: δ=4 vs (4, 4): all equal -> 1;
    # q5: δ=2 below min(4, 4) -> 0; q6: δ=2 ties the lower extreme of (4, 2): reference -> third case.
    s_prune, _ = run(GateConfig(third_case="prune"), [2, 4, 4, 4, 2, 2])
    s_prev, _ = run(GateConfig(third_case="previous"), [2, 4, 4, 4, 2, 2])
    assert s_prune == [0, 0, 0, 1, 1, 0, 1]
    assert s_prev == [0, 0, 0, 1, 1, 0, 0]  # Eq. 18 as printed would also say 0 here (δ ≤ V)


@pytest.mark.parametrize("d", [1.0, 0.0])
def test_equal_displacements_prune_three_in_four(d):
    """A still arm (all δ = 0) or constant speed ties every extreme -> 1, broken only by the limiter."""
    states, _ = run(GateConfig(), [d] * 10)
    assert states == [0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0]


def test_epsilon_displacements():
    eps = 2.0 ** -40
    states, _ = run(GateConfig(), [0, 0, eps, 0, eps])
    # q3: ε ≥ max(0, 0) -> 1; q4: 0 < min(0, ε)? no, 0 == min -> third case -> 1; q5: ε ≥ max(ε, 0) -> 1
    assert states == [0, 0, 0, 1, 1, 1]
    states, _ = run(GateConfig(), [eps, eps, eps, 0])
    assert states == [0, 0, 0, 1, 0]  # 0 < min(ε, ε)


def test_third_case_both_ways():
    # q3: δ=2 between (1, 3): prune -> 1, previous -> state of q2 (cold, 0);
    # q4: δ=5 -> 1; q5: δ=4 between (2, 5): previous keeps 1.
    deltas = [1, 3, 2, 5, 4]
    assert run(GateConfig(third_case="prune"), deltas)[0] == [0, 0, 0, 1, 1, 1]
    assert run(GateConfig(third_case="previous"), deltas)[0] == [0, 0, 0, 0, 1, 1]


def test_window_floor_and_larger_window():
    deltas = [1, 2, 3, 4, 5]
    assert run(GateConfig(window=1), deltas)[0] == run(GateConfig(window=3), deltas)[0]
    states, infos = run(GateConfig(window=4), [3, 1, 2, 2.5, 0.5])
    assert states == [0, 0, 0, 0, 1, 0]  # cold through q3; q4: 2.5 between (1, 3) -> 1; q5: 0.5 < 1 -> 0
    assert (infos[4]["gate_upper"], infos[4]["gate_lower"]) == (3, 1)


def test_paper_two_window_cold_start():
    states, infos = run(GateConfig(cold_start=2), [1, 2, 0.5])
    assert states == [0, 0, 1, 0]  # q2: δ_1 = 2 vs the one window there is (1) -> 1
    assert infos[2]["gate_upper"] == infos[2]["gate_lower"] == 1


def test_limiter_variants():
    rising = [1, 2, 3, 4, 5, 6, 7, 8]
    assert run(GateConfig(limit_consecutive=False), rising)[0] == [0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert run(GateConfig(max_consecutive=1), rising)[0] == [0, 0, 0, 1, 0, 1, 0, 1, 0]
    states, infos = run(GateConfig(initial_state=1), rising)
    assert states == [1, 1, 1, 0, 1, 1, 1, 0, 1]  # cold starts pruned count toward the streak
    assert infos[3]["gate_reason"] == "limit" and infos[0]["gate_streak"] == 1


def test_reset_between_episodes_reproduces():
    gate = ActionAwareGate(GateConfig())
    first = run(GateConfig(), [1, 2, 3, 1, 5], gate)
    with pytest.raises(ValueError, match="expected query index 6"):
        gate.decide(q(0, [0, 0, 0]))
    gate.reset()
    assert run(GateConfig(), [1, 2, 3, 1, 5], gate) == first


# -- windows from the recorded path -----------------------------------------------------------
def test_path_window_uses_eef_path_and_min_delta_pos():
    cfg = GateConfig(rule="ema", displacement="path", min_delta_pos=0.01)
    gate = ActionAwareGate(cfg)
    gate.decide(q(0, [0, 0, 0]))
    path = [[0.005, 0, 0], [0.025, 0, 0], [0.03, 0, 0]]
    gate.decide(q(1, path[-1], path))
    assert gate.info()["displacement"] == pytest.approx(0.02)  # 5 mm steps dropped
    gate.decide(q(2, [0.03, 0.05, 0]))  # no eef_path: window = [previous eef_pos, this eef_pos]
    assert gate.info()["displacement"] == pytest.approx(0.05)


def test_net_window_ignores_min_delta_pos_and_path_shape():
    gate = ActionAwareGate(GateConfig(rule="ema", min_delta_pos=1.0))
    gate.decide(q(0, [0, 0, 0]))
    gate.decide(q(1, [0, 0.5, 0], [[1, 0, 0], [1, 1, 0], [0, 0.5, 0]]))
    assert gate.info()["displacement"] == pytest.approx(0.5)


# -- mean and EMA -----------------------------------------------------------------------------
def test_ema_by_hand():
    states, infos = run(GateConfig(rule="ema"), [1, 3, 1, 2])
    assert states == [0, 1, 1, 0, 1]  # first decision always 1
    assert [i["gate_mean"] for i in infos] == [None, 1, 2, 1.5, 1.75]
    assert run(GateConfig(rule="ema"), [1, 2, 3, 4, 5])[0] == [0, 1, 1, 1, 0, 1]  # limiter applies


def test_mean_by_hand():
    states, infos = run(GateConfig(rule="mean"), [2, 4, 1, 3])
    assert states == [0, 1, 1, 0, 1]
    assert [i["gate_mean"] for i in infos[:3]] == [None, 2, 3]
    assert infos[3]["gate_mean"] == pytest.approx(7 / 3) and infos[4]["gate_mean"] == 2.5


def test_mean_ties_exactly():
    assert np.mean([0.1] * 3) > 0.1  # a float mean would turn this tie into 0
    assert mean_rule(0.1, [0.1] * 3)[0] == 1
    below = np.nextafter(0.1, 0.0)
    assert mean_rule(below, [0.1, 0.1, below])[0] == 0


# -- FK displacement --------------------------------------------------------------------------
def test_fk_gate_needs_observed_actions():
    gate = ActionAwareGate(GateConfig(rule="ema", displacement="fk"))
    gate.decide(q(0, [0, 0, 0], rotvec=np.array([0.0, 0.0, 1.0])))
    chunk = np.zeros((8, 7))
    chunk[:, 0], chunk[:, 5] = 0.25, 0.3  # turning while moving: path 8·0.25 whatever the turn
    gate.observe_actions(chunk)
    gate.decide(q(1, [5, 5, 5]))  # the measured pose plays no part
    assert gate.info()["displacement"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="observe_actions"):
        gate.decide(q(2, [5, 5, 5]))
    with pytest.raises(ValueError, match=">=6"):
        gate.observe_actions(np.zeros((8, 3)))


# -- ablation schedules -----------------------------------------------------------------------
def schedule_states(cfg: GateConfig, n: int, pos=None):
    gate = ActionAwareGate(cfg)
    return [gate.decide(q(i, pos)) for i in range(n)], gate.info()


def test_static_prunes_every_query_without_eef():
    states, info = schedule_states(GateConfig(schedule="static"), 10)
    assert states == [1] * 10  # no limiter, no cold start
    assert info["gate_reason"] == "schedule" and info["displacement"] is None and info["gate_streak"] == 10


def test_periodic_pattern():
    assert schedule_states(GateConfig(schedule="periodic", period=2), 8)[0] == [0, 0, 1, 1, 0, 0, 1, 1]
    assert schedule_states(GateConfig(schedule="periodic", initial_state=1), 5)[0] == [1, 0, 1, 0, 1]


def test_schedule_reports_displacement_when_it_can():
    gate = ActionAwareGate(GateConfig(schedule="periodic"))
    gate.decide(q(0, [0, 0, 0]))
    gate.decide(q(1, [0, 3, 4]))
    assert gate.info()["displacement"] == 5.0 and gate.info()["gate_reason"] == "schedule"


def test_random_schedule_reproducible_and_seed_dependent():
    cfg = GateConfig(schedule="random", random_state_prob=0.5, random_seed=42)
    a, _ = schedule_states(cfg, 400)
    gate = ActionAwareGate(cfg)
    [gate.decide(q(i, None)) for i in range(7)]
    gate.reset()
    assert [gate.decide(q(i, None)) for i in range(400)] == a
    b, _ = schedule_states(GateConfig(schedule="random", random_seed=43), 400)
    assert a != b
    assert 0.4 < np.mean(a) < 0.6
    assert schedule_states(GateConfig(schedule="random", random_state_prob=0.0), 50)[0] == [0] * 50
    assert schedule_states(GateConfig(schedule="random", random_state_prob=1.0), 50)[0] == [1] * 50


# -- bad input --------------------------------------------------------------------------------
def test_dynamic_needs_eef_pos():
    with pytest.raises(ValueError, match="eef_pos"):
        ActionAwareGate(GateConfig()).decide(q(0, None))


@pytest.mark.parametrize("query", [
    q(0, [0, 0]), q(0, [0, np.inf, 0]), q(0, [0, 0, 0], rotvec=[1, 2]),
])
def test_bad_pose_is_a_clear_error(query):
    with pytest.raises(ValueError, match="3 finite numbers"):
        ActionAwareGate(GateConfig()).decide(query)


def test_bad_path_is_a_clear_error():
    gate = ActionAwareGate(GateConfig())
    gate.decide(q(0, [0, 0, 0]))
    with pytest.raises(ValueError, match=r"eef_path\[1\]"):
        gate.decide(q(1, [0, 0, 0], [[0, 0, 0], [np.nan, 0, 0]]))


@pytest.mark.parametrize("kw", [dict(cold_start=0), dict(random_seed=-1), dict(window="3"), dict(rule="avg")])
def test_config_validation_quotes_the_value(kw):
    with pytest.raises(ValueError, match=repr(next(iter(kw.values())))):
        GateConfig(**kw)


# -- the reference configs --------------------------------------------------------------------
@pytest.mark.parametrize("name,keep", [("prune_v2_config.json", 0.75), ("adp_paper.json", 0.5)])
def test_reference_configs_load(name, keep):
    with pytest.warns(UserWarning, match="adjacent_lookback.*no effect"):
        cfg = ADPConfig.from_dict(read_config_file(ROOT / "configs" / name))
    assert cfg.keep_ratio == keep and cfg.layer == 0 and cfg.split == (0.4, 0.6)
    assert cfg.gate == GateConfig(rule="adjacent", window=3, third_case="prune", initial_state=0,
                                  displacement="net", limit_consecutive=True, max_consecutive=3)


# -- parity with the reference controller -----------------------------------------------------
class ReferencePort:
    """Independent port of the reference's per-episode controller (chen7086/VLA-ADP ``run_libero_eval_prune_v2.py``), reading reference field names.

    ``observe`` records a pose (the first one of a closed window opens the next); ``close`` computes the
    window displacement and decides the state of the next query.
    """

    def __init__(self, ref: dict):
        self.ref = ref
        self.state = int(ref.get("initial_state", 0))
        self.limit = bool(ref.get("limit_consecutive_pruned_enabled", True))
        self.streak = 1 if (self.state == 1 and self.limit) else 0
        self.positions: list[np.ndarray] | None = None  # None = no window open
        self.history: list[float] = []
        self.avg: float | None = None
        self.last_delta: float | None = None

    def observe(self, pos):
        if self.positions is None:
            self.positions = []
        self.positions.append(np.array(pos, dtype=np.float64))

    def delta(self) -> float:
        p = np.stack(self.positions)
        if len(p) <= 1:
            return 0.0
        if (str(self.ref.get("delta_method", "net")) or "net").lower() in ("sum", "arc_sum", "hypot"):
            steps = np.linalg.norm(p[1:] - p[:-1], axis=1)
            return float(np.sum(np.where(steps < self.ref.get("min_delta_pos", 0.0), 0.0, steps)))
        return float(np.linalg.norm(p[-1] - p[0]))

    def close(self):
        d = self.last_delta = self.delta()
        if (str(self.ref.get("decision_method", "avg")) or "avg").lower() == "avg":
            self.avg = d if self.avg is None else 0.5 * self.avg + 0.5 * d
            nxt = 1 if d >= self.avg else 0
        else:
            lw = max(3, int(self.ref.get("adjacent_extrema_window", 3)))
            self.history.append(d)
            if len(self.history) < lw:
                nxt = int(self.ref.get("initial_state", 0))
            else:
                prev = self.history[-lw:-1]
                if d >= max(prev):
                    nxt = 1
                elif d < min(prev):
                    nxt = 0
                else:
                    nxt = self.state if self.ref.get("adjacent_last_state", False) else 1
        if self.limit:
            if nxt == 1 and self.streak >= int(self.ref.get("limit_max_consecutive_pruned", 3)):
                nxt, self.streak = 0, 0
            else:
                self.streak = self.streak + 1 if nxt == 1 else 0
        self.state = nxt
        self.positions = None


def reference_episode(ref: dict, trajectory: np.ndarray, chunk: int):
    """The reference eval loop with a scripted arm: trajectory[t] = EEF position after t env steps."""
    ctl, queue, t = ReferencePort(ref), deque(maxlen=chunk), 0
    states, deltas = [], [None]
    while t < len(trajectory) - 1:
        if not queue:
            if ctl.positions is None:
                ctl.observe(trajectory[t])  # window start = pose at query time
            states.append(int(ctl.state == 1))  # the loop sets qk_keep_enabled = (state == 1)
            queue.extend(range(chunk))
        queue.popleft()
        t += 1
        ctl.observe(trajectory[t])  # pose after env.step
        if not queue and ctl.positions is not None:
            ctl.close()
            deltas.append(ctl.last_delta)
    return states, deltas[:len(states)]


def gate_episode(ref: dict, trajectory: np.ndarray, chunk: int, give_path: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gate = ActionAwareGate(ADPConfig.from_dict(ref).gate)
    states, deltas = [], []
    for i, t in enumerate(range(0, len(trajectory) - 1, chunk)):
        path = list(trajectory[t - chunk + 1:t + 1]) if i > 0 and give_path else []
        states.append(gate.decide(Query(i, LAYOUT, trajectory[t], None, path)))
        deltas.append(gate.info()["displacement"])
    return states, deltas


lattice = st.lists(st.lists(st.integers(-1, 1), min_size=3, max_size=3), min_size=1, max_size=160)
floats = st.lists(st.lists(st.floats(-0.05, 0.05, allow_nan=False), min_size=3, max_size=3),
                  min_size=1, max_size=160)
reference_configs = st.fixed_dictionaries({
    # Every value the reference accepts, including those that mean something else in our vocabulary
    # ("mean", "ema", "path", "fk") and the degenerate ones (window 0, limit 0, initial_state 2).
    "decision_method": st.sampled_from(["adjacent", "avg", "AVG", "extrema-anything", "", "mean", "ema"]),
    "adjacent_extrema_window": st.integers(-1, 6),
    "adjacent_last_state": st.booleans(),
    "initial_state": st.integers(-1, 2),
    "delta_method": st.sampled_from(["net", "sum", "arc_sum", "HYPOT", "other", "", "path", "fk"]),
    "min_delta_pos": st.sampled_from([0.0, 0.01, 1.0, 1.5]),
    "limit_consecutive_pruned_enabled": st.booleans(),
    "limit_max_consecutive_pruned": st.integers(-1, 4),
})


@settings(max_examples=300, deadline=None)
@given(reference_configs, st.one_of(lattice, floats), st.integers(1, 8), st.booleans())
def test_gate_matches_reference_controller(ref, steps, chunk, give_path):
    trajectory = np.concatenate([np.zeros((1, 3)), np.cumsum(np.asarray(steps, float), axis=0)])
    if not give_path and ref["delta_method"].lower() in ("sum", "arc_sum", "hypot"):
        give_path = True  # without the recorded path only the net displacement is the reference's
    want_states, want_deltas = reference_episode(ref, trajectory, chunk)
    got_states, got_deltas = gate_episode(ref, trajectory, chunk, give_path)
    assert got_states == want_states
    assert got_deltas == want_deltas  # same float operations: exact
