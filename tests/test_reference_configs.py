"""Reference ADP configuration files mean what they mean in chen7086/VLA-ADP.

The reference reads its JSON in ``_load_qk_config_from_json_if_any`` of
``experiments/robot/libero/run_libero_eval_prune_v2.py`` (defaults: ``PruneV2GenerateConfig``) and
overwrites ``qk_keep_enabled`` from the gate at every query in its evaluation loop. Its sweep
scripts (``scripts/*.sh``, ``scripts/r1``, ``scripts/r3``) edit a base file with ``jq``; their base
files are not in the repository, so the configs below edit the shipped ``prune_v2_config.json``
with each script's settings.
"""

from __future__ import annotations

import itertools
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.test_gate import LAYOUT, reference_episode
from vla_adp.seam.context import Query
from vla_adp.pruning.config import ADPConfig, GateConfig
from vla_adp.pruning.pruners.adp import ADPPruner
from vla_adp.pruning.registry import build_pruner, read_config_file

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = read_config_file(ROOT / "configs" / "prune_v2_config.json")


def load(ref: dict) -> ADPConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ADPConfig.from_dict(ref)


def pruned_queries(cfg: ADPConfig, trajectory: np.ndarray, chunk: int) -> list[int]:
    """1 where the ADP pruner asks to prune (its begin() returns a layer), per query."""
    pruner, out = ADPPruner(cfg), []
    for i, t in enumerate(range(0, len(trajectory) - 1, chunk)):
        out.append(int(bool(pruner.begin(Query(i, LAYOUT, trajectory[t])))))
    return out


def reference_pruned(ref: dict, trajectory: np.ndarray, chunk: int) -> list[int]:
    """What the reference runs: the gate's state when dynamic, else qk_keep_enabled; only if ratio < 1."""
    ratio = float(ref.get("qk_keep_ratio", 0.75))
    if bool(ref.get("use_dynamic_visual_strategy", True)):
        states, _ = reference_episode(ref, trajectory, chunk)
    else:
        states = [int(bool(ref.get("qk_keep_enabled", True)))] * len(range(0, len(trajectory) - 1, chunk))
    return [int(s == 1 and ratio < 1.0) for s in states]


def trajectories(n: int = 6, steps: int = 200):
    rng = np.random.default_rng(13)
    for i in range(n):
        speed = np.abs(np.sin(np.linspace(0, 3 + i, steps)))[:, None] * rng.normal(0, 0.01, (steps, 3))
        yield np.concatenate([np.zeros((1, 3)), np.cumsum(speed, axis=0)])


# -- point 1: qk_keep_enabled under the dynamic gate ----------------------------------------------
def test_qk_keep_enabled_false_does_not_stop_the_dynamic_gate():
    ref = {**SHIPPED, "qk_keep_enabled": False, "initial_state": 1}
    with pytest.warns(UserWarning, match="qk_keep_enabled=false has no effect with the dynamic gate"):
        cfg = ADPConfig.from_dict(ref)
    traj = next(trajectories())
    got = pruned_queries(cfg, traj, 8)
    assert got == reference_pruned(ref, traj, 8) and got[0] == 1 and sum(got) > 1


def test_qk_keep_enabled_is_the_switch_of_static_pruning():
    traj = next(trajectories())
    for enabled in (True, False):
        ref = {**SHIPPED, "qk_keep_enabled": enabled, "use_dynamic_visual_strategy": False}
        got = pruned_queries(load(ref), traj, 8)
        assert got == reference_pruned(ref, traj, 8) == [int(enabled)] * len(got)


# -- point 2: files and values the reference accepts ------------------------------------------------
def test_unknown_keys_are_ignored_with_one_warning_listing_them():
    ref = {**SHIPPED, "overlay_pruned": True, "overlay_actions": True, "dump_episode": True}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = ADPConfig.from_dict(ref)
    unknown = [w for w in caught if "unknown fields" in str(w.message)]
    assert len(unknown) == 1 and "'overlay_pruned'" in str(unknown[0].message) and "'overlay_actions'" in str(unknown[0].message)
    assert cfg.keep_ratio == 0.75


@pytest.mark.parametrize("field,value,check", [
    ("adjacent_extrema_window", 0, lambda c: c.gate.window == 0),
    ("adjacent_extrema_window", -2, lambda c: c.gate.window == -2),
    ("limit_max_consecutive_pruned", 0, lambda c: c.gate.max_consecutive == 0),
    ("qk_keep_split", [0, 0], lambda c: c.split is None),
    ("qk_keep_split", [], lambda c: c.split is None),
    ("qk_keep_split", "0.4,,0.6", lambda c: c.split is None),
    ("qk_keep_split", "0.3,0.7", lambda c: c.split == (0.3, 0.7)),
    ("initial_state", 2, lambda c: c.gate.initial_state == 0),
    ("initial_state", -1, lambda c: c.gate.initial_state == 0),
    ("qk_keep_ratio", 1.5, lambda c: c.keep_ratio == 1.0),
])
def test_values_the_reference_accepts_load(field, value, check):
    assert check(load({**SHIPPED, field: value}))


@pytest.mark.parametrize("field,value", [
    ("adjacent_extrema_window", 0), ("limit_max_consecutive_pruned", 0), ("limit_max_consecutive_pruned", -1),
    ("initial_state", 2), ("initial_state", 1), ("qk_keep_split", [0, 0]),
])
def test_degenerate_values_drive_the_gate_as_the_reference(field, value):
    ref = {**SHIPPED, field: value, "limit_consecutive_pruned_enabled": True}
    for traj in trajectories(3):
        assert pruned_queries(load(ref), traj, 8) == reference_pruned(ref, traj, 8)


def test_limit_zero_never_prunes_after_the_first_query():
    ref = {**SHIPPED, "limit_max_consecutive_pruned": 0, "initial_state": 1}
    got = pruned_queries(load(ref), next(trajectories()), 8)
    assert got[0] == 1 and not any(got[1:])


def test_qk_layer_as_a_list_is_refused_with_what_the_reference_does():
    with pytest.raises(ValueError, match=r"qk_layer must be one int, got \[8\].*silently runs with its defaults"):
        load({**SHIPPED, "qk_layer": [8]})


@pytest.mark.parametrize("ratio", [0.0, -0.5])
def test_keep_ratio_that_hangs_the_reference_is_refused(ratio):
    with pytest.raises(ValueError, match="quota loop never ends"):
        load({**SHIPPED, "qk_keep_ratio": ratio})


# -- point 3: the reference's defaults and string meanings -----------------------------------------
def test_missing_fields_take_the_reference_dataclass_defaults():
    cfg = load({"qk_keep_enabled": True})
    assert cfg.keep_ratio == 0.75 and cfg.split is None and cfg.layer == 0 and cfg.layer_mode == "probe"
    assert cfg.gate == GateConfig(schedule="dynamic", rule="ema", window=3, third_case="prune", initial_state=0,
                                  displacement="net", limit_consecutive=True, max_consecutive=3)
    no_rule = {k: v for k, v in SHIPPED.items() if k != "decision_method"}
    assert load(no_rule).gate.rule == "ema"  # the dataclass default "avg"
    assert load({"keep_ratio": 0.5}).gate.rule == "adjacent"  # our vocabulary: our defaults


@pytest.mark.parametrize("method,rule", [("avg", "ema"), ("AVG", "ema"), ("", "ema"), ("adjacent", "adjacent"),
                                         ("mean", "adjacent"), ("ema", "adjacent"), (None, "adjacent")])
def test_decision_method_means_what_the_reference_reads(method, rule):
    assert load({**SHIPPED, "decision_method": method}).gate.rule == rule


@pytest.mark.parametrize("method,disp", [("net", "net"), ("sum", "path"), ("Arc_Sum", "path"), ("hypot", "path"),
                                         ("path", "net"), ("fk", "net"), ("", "net"), ("anything", "net")])
def test_delta_method_means_what_the_reference_reads(method, disp):
    assert load({**SHIPPED, "delta_method": method}).gate.displacement == disp


def test_our_names_keep_their_own_meaning_and_win_over_reference_names():
    cfg = load({**SHIPPED, "rule": "mean", "displacement": "fk", "keep_ratio": 0.5})
    assert (cfg.gate.rule, cfg.gate.displacement, cfg.keep_ratio) == ("mean", "fk", 0.5)


# -- the sweep scripts' configurations ---------------------------------------------------------------
def sweep_configs() -> list[tuple[str, dict]]:
    """prune_v2_config.json edited by the jq settings of every reference sweep script."""
    out: list[tuple[str, dict]] = []
    add = lambda name, **edits: out.append((name, {**SHIPPED, **edits}))  # noqa: E731
    for layer in (8, 16, 24, 31):  # ablation_layer.sh, ablation_layer_spatial.sh, ablation_ratio_spatial.sh, r1/q1
        add(f"qk_layer={layer}", qk_layer=layer)
    for lookback in range(4, 11):  # ablation_lookback_{spatial,object}.sh
        add(f"lookback={lookback}", adjacent_lookback=lookback)
    for window in range(4, 11):  # ablation_window(_spatial).sh
        add(f"window={window}", adjacent_extrema_window=window)
    for keep in (1.0, 0.75, 0.5, 0.35, 0.25):  # ablation_r4_q1_trade_off.sh
        add(f"static keep={keep}", qk_keep_ratio=keep, qk_keep_enabled=True, use_dynamic_visual_strategy=False,
            dynamic_ablation_enabled=False)
        add(f"adp keep={keep}", qk_keep_ratio=keep, qk_keep_enabled=True, use_dynamic_visual_strategy=True,
            dynamic_ablation_enabled=False)
    for dynamic in (False, True):  # ablation_r4_q2_vis.sh
        add(f"vis dynamic={dynamic}", dump_episode=True, save_videos=True, overlay_pruned=True, overlay_actions=True,
            use_dynamic_visual_strategy=dynamic, dynamic_ablation_enabled=False, dump_dir="vis", num_trials_per_task=2)
    add("q3 ours", use_dynamic_visual_strategy=True, dynamic_ablation_enabled=False)  # ablation_r4_q3_gener.sh
    for state in (0, 1):
        add(f"q3 always initial_state={state}", use_dynamic_visual_strategy=False, dynamic_ablation_enabled=True,
            initial_state=state)
    for leff, rot in itertools.product((0.10, 0.15, 0.20), (0.0, 0.02)):
        add(f"q3 L_eff={leff} rot={rot}", use_dynamic_visual_strategy=True, L_eff=leff, min_delta_rot=rot)
    add("f1 failure vis", dump_episode=True, save_videos=True, overlay_pruned=True, overlay_actions=True,
        dump_dir="vis_failcases", num_trials_per_task=50, use_dynamic_visual_strategy=True)  # r1/f1_failure_vis.sh
    for window, keep in itertools.product((3, 5, 7, 9), (1.0, 0.75, 0.5, 0.35)):  # r1/w1_window_keep_sweep.sh
        add(f"window={window} keep={keep}", adjacent_extrema_window=window, qk_keep_ratio=keep,
            use_dynamic_visual_strategy=True)
    for dm, leff, pos, rot in itertools.product(("net", "arc_sum", "hypot"), (0.10, 0.15, 0.20), (0.0, 0.01),
                                                (0.0, 0.02)):  # r3/w2_threshold_sweep.sh
        add(f"{dm} L_eff={leff} pos={pos} rot={rot}", delta_method=dm, L_eff=leff, min_delta_pos=pos, min_delta_rot=rot)
    return out


SWEEPS = sweep_configs()


def test_every_sweep_script_setting_is_covered():
    assert len(SWEEPS) == 4 + 7 + 7 + 10 + 2 + 1 + 2 + 6 + 1 + 16 + 36


@pytest.mark.parametrize("name,ref", SWEEPS, ids=[n for n, _ in SWEEPS])
def test_sweep_script_configs_load_and_drive_the_gate_as_the_reference(name, ref, tmp_path):
    path = tmp_path / "tmp_prune.json"
    path.write_text(json.dumps(ref))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = build_pruner(None, config_file=path)  # what `--pruning-config FILE` builds
    cfg = pruner.config
    assert (cfg.keep_ratio, cfg.layer, cfg.split) == (ref["qk_keep_ratio"], ref["qk_layer"], (0.4, 0.6))
    assert cfg.layer_mode == "probe"  # the reference's extra pass for qk_layer > 0
    for chunk, traj in zip((8, 5), trajectories(2, 160)):
        # path-length displacements need the recorded path: give every executed step's position
        pruner.reset()
        got = []
        for i, t in enumerate(range(0, len(traj) - 1, chunk)):
            path = list(traj[t - chunk + 1:t + 1]) if i > 0 else []
            got.append(int(bool(pruner.begin(Query(i, LAYOUT, traj[t], None, path)))))
        assert got == reference_pruned(ref, traj, chunk), name
