"""``vla-adp eval libero --family pi05``: the π0 families' LIBERO adapter (vla_adp.envs.libero_pi0) and
its protocol in the evaluation job, the run identity, the CLI's refusals, and real episodes with a tiny
π0.5 checkpoint (unpruned, ADP, resumed, and the parallel runner against the serial one).

The tiny random model cannot solve a task; the episodes check the plumbing: the protocol's replanning
reaches the policy (openpi: 5 actions per chunk, so 2 queries in 10 steps), the query records carry
the kept / visual counts and FLOPs, a rerun skips finished episodes.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from vla_adp.cli import main
from vla_adp.eval.job import EvalJob, load_policy, run_config, run_job
from vla_adp.eval.logs import config_hash, read_log
from vla_adp.model.pi0.tiny import make_tiny_pi0_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("pi_eval")
    return {f: make_tiny_pi0_checkpoint(root / f, f, n_action_steps=10, chunk_size=12) for f in ("pi0", "pi05")}


def _job(ckpt, **kw) -> EvalJob:
    fields = {"env": "libero", "suite": "libero_spatial", "log": "", "tasks": (0,), "episodes": (0, 1),
              "family": "pi05", "verbose": False, **kw}
    return EvalJob(checkpoint=str(ckpt), **fields)


def test_protocol_is_part_of_the_pi0_identity(ckpts):
    default, lerobot, openpi = (_job(ckpts["pi05"], protocol=p) for p in (None, "lerobot", "openpi"))
    method = run_config(default)["method"]
    assert (method["family"], method["protocol"], method["policy"]) == ("pi05", "lerobot", {})
    assert config_hash(run_config(default)) == config_hash(run_config(lerobot))  # the default, resolved
    assert config_hash(run_config(openpi)) != config_hash(run_config(lerobot))


@pytest.mark.parametrize("kw,match", [
    ({"protocol": "pi"}, r"unknown libero protocol 'pi' for --family pi05; expected one of \['lerobot', 'openpi'\]"),
    ({"family": "oft", "protocol": "openpi"}, "--protocol 'openpi' does not apply to --family oft on libero"),
    ({"env": "metaworld"}, r"--family pi05 runs on the environments \['libero'\], not 'metaworld'"),
    ({"platform": "libero"}, "--platform 'libero' does not apply to --family pi05"),
    ({"overlay_video_dir": "v"}, "--overlay-video-dir draws OpenVLA-OFT's image pipeline"),
])
def test_bad_protocol_or_env_fails_at_construction(ckpts, kw, match):
    fields = {"env": "libero", "suite": "libero_spatial", "checkpoint": str(ckpts["pi05"]), "log": "",
              "family": "pi05", **kw}
    with pytest.raises(ValueError, match=match):
        EvalJob(**fields)


def test_protocol_options_reach_the_policy(ckpts):
    openpi = load_policy(_job(ckpts["pi05"], protocol="openpi"), None)
    lerobot = load_policy(_job(ckpts["pi05"]), None)
    assert (openpi.platform.chunk, openpi.discrete_state) == (5, False)
    assert (lerobot.platform.chunk, lerobot.discrete_state) == (10, True)
    with pytest.raises(ValueError, match=r"--family pi05 asked for, but .* is a pi0 checkpoint"):
        load_policy(_job(ckpts["pi0"]), None)
    pi0 = load_policy(_job(ckpts["pi0"], family="pi0"), None)  # LeRobot's protocol: π0 keeps its state token
    assert (pi0.platform.chunk, pi0.discrete_state) == (10, False)


@pytest.mark.parametrize("flags,match", [
    (["--unnorm-key", "libero_spatial"], r"--unnorm-key \(unnorm_key='libero_spatial'\): OpenVLA-OFT's setting"),
    (["--no-center-crop"], r"--no-center-crop \(center_crop=False\): OpenVLA-OFT's setting"),
    (["--protocol", "openpi", "--family", "oft"], "--protocol 'openpi' does not apply to --family oft"),
])
def test_eval_refuses_oft_settings_for_pi05(ckpts, tmp_path, capsys, flags, match):
    log = tmp_path / "x.jsonl"
    args = ["eval", "libero", "--family", "pi05", "--checkpoint", str(ckpts["pi05"]), "--suite", "libero_spatial",
            "--tasks", "0", "--trials", "1", "--log", str(log), *flags]
    assert main(args) == 2
    assert match.replace("\\", "") in capsys.readouterr().err.replace("\\", "")
    assert not log.exists()


@pytest.mark.sim
@pytest.mark.slow
def test_eval_libero_pi05_runs_prunes_and_resumes(ckpts, tmp_path, capsys):
    static = tmp_path / "adp_static.json"  # ADP on every query (the dynamic gate's first queries keep all)
    static.write_text(json.dumps({"pruner": "adp", "gate": {"schedule": "static"}}))
    base = ["eval", "libero", "--family", "pi05", "--checkpoint", str(ckpts["pi05"]), "--suite", "libero_spatial",
            "--tasks", "0", "--trials", "1", "--max-steps", "10", "--fast-render", "--protocol", "openpi", "--quiet"]
    logs = {name: tmp_path / f"{name}.jsonl" for name in ("none", "adp")}
    assert main([*base, "--log", str(logs["none"]), "--video-dir", str(tmp_path / "videos")]) == 0
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 1  # the plain agentview video
    assert main([*base, "--keep", "0.5", "--pruning-config", str(static), "--log", str(logs["adp"])]) == 0
    out = {name: read_log(path) for name, path in logs.items()}
    for name, log in out.items():
        (run,) = log.runs
        assert (run.config["method"]["family"], run.config["method"]["protocol"]) == ("pi05", "openpi")
        (ep,) = log.episodes.values()
        assert ep.error is None and ep.steps == 10 and ep.queries == 2, name  # openpi: 5 actions per chunk
        queries = log.all_queries()
        assert len(queries) == 2 and all(q.n_visual == 8 and q.flops_full > 0 for q in queries)  # 2 cameras × 4
    assert all(not q.pruned and q.kept_visual == 8 and q.flops == q.flops_full for q in out["none"].all_queries())
    assert all(q.pruned and q.kept_visual == 4 and q.kept_per_view == [2, 2] and q.flops < q.flops_full
               for q in out["adp"].all_queries())
    assert out["adp"].runs[0].config["method"]["pruner"]["config"]["gate"]["schedule"] == "static"

    # a rerun skips the finished episode: no new line in the log
    lines = logs["adp"].read_text().count("\n")
    assert main([*base, "--keep", "0.5", "--pruning-config", str(static), "--log", str(logs["adp"])]) == 0
    assert logs["adp"].read_text().count("\n") == lines
    assert "libero_spatial: 0/1 successes" in capsys.readouterr().out

    # the parallel runner (one spawned simulator process): the same queries as the serial run
    job = dataclasses.replace(_job(ckpts["pi05"], protocol="openpi", max_steps=10, render="fast", pruner="adp",
                                   keep=0.5, pruner_fields={"gate": {"schedule": "static"}}),
                              log=str(tmp_path / "parallel.jsonl"), envs=2, tasks=(0,))
    (rec,) = run_job(job)
    assert rec.error is None and rec.queries == 2
    serial = out["adp"].all_queries()
    parallel = read_log(job.log).all_queries()
    fields = [[(q.eef_pos, q.kept_visual, q.flops) for q in queries] for queries in (parallel, serial)]
    assert fields[0] == fields[1]


def test_sweep_grid_may_set_the_protocol(ckpts, tmp_path):
    from vla_adp.eval.sweep import expand_grid, plan

    template = _job(ckpts["pi05"], episodes=(0, 2))
    cfgs = expand_grid({"grid": {"protocol": ["lerobot", "openpi"], "pruner": [None, "vla_pruner"]},
                        "base": {"keep": 0.5, "fastv_k": 1}})
    chunks = plan(template, cfgs, ["libero_spatial"], tmp_path / "out", chunk=2)
    assert len({c.config_hash for c in chunks}) == 4
    by = {(c.job.protocol, c.job.pruner): c for c in chunks}
    assert by[("lerobot", None)].config_hash == config_hash(run_config(template))  # the default protocol
    pruned = run_config(by[("openpi", "vla_pruner")].job)["method"]
    assert pruned["protocol"] == "openpi" and pruned["pruner"]["name"] == "vla_pruner_pi0"
    assert pruned["pruner"]["config"]["layer"] == 1  # the fork's fastv_k is FastV's layer
    with pytest.raises(ValueError, match=r"config 0 .*--protocol 'openpi' does not apply to --family oft"):
        plan(dataclasses.replace(template, family="oft"), expand_grid({"configs": [{"protocol": "openpi"}]}),
             ["libero_spatial"], tmp_path / "o")
