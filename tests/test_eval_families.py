"""``EvalJob.family``: validated, part of the run identity only when not ``oft`` (OFT hashes are pinned),
used by the serial and the parallel runner and by the sweep planner; ``vla-adp eval --family``.

The closed-loop OpenVLA episodes in the real LIBERO simulator are in tests/test_eval_libero.py; here the
runners step the toy env of tests/eval_helpers.py (the parallel runner in real spawned processes).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from vla_adp.cli import main
from vla_adp.eval.job import ENV_FACTORIES, EvalJob, build_pruner, run_config, run_job
from vla_adp.eval.logs import config_hash, read_log
from vla_adp.eval.sweep import expand_grid, plan
from vla_adp.pruning.pruners.vla_pruner_openvla import VLAPrunerOpenVLA

POLICY = {"unnorm_key": "libero_spatial_no_noops", "center_crop": True, "action_slice": "upstream"}
# (config hash, method hash) of two OFT jobs, computed before the family field existed (commit 22c59d6):
# OFT runs must keep their hashes, or every existing log would stop resuming. A change to ADP's default
# config changes the second pair legitimately; the unpruned pair must never change.
PINNED = {None: ("dfe7c0126e622f3e", "ef4e9a87d6d22347"), "adp": ("cd9302ee5a718e30", "dbe5ea7ac9838f76")}


@pytest.fixture
def fixed_ckpt(tmp_path):
    """A folder whose identity (name + description-file hashes) is fixed bytes; run_config loads no model."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "openvla", "pinned": true}\n')
    return folder


def _job(ckpt, **kw) -> EvalJob:
    return EvalJob(env="libero", suite="libero_spatial", checkpoint=str(ckpt), log="", tasks=(0,), episodes=(0, 2),
                   policy=dict(POLICY), **kw)


@pytest.mark.parametrize("pruner", [None, "adp"])
def test_oft_run_hashes_are_pinned(fixed_ckpt, pruner):
    for job in (_job(fixed_ckpt, pruner=pruner, keep=0.5 if pruner else None),
                _job(fixed_ckpt, pruner=pruner, keep=0.5 if pruner else None, family="oft")):
        config = run_config(job)
        assert "family" not in config["method"]
        assert (config_hash(config), config_hash(config["method"])) == PINNED[pruner]


def test_other_family_is_part_of_the_identity(fixed_ckpt):
    oft, ovla = _job(fixed_ckpt), _job(fixed_ckpt, family="openvla")
    assert run_config(ovla)["method"]["family"] == "openvla"
    assert config_hash(run_config(ovla)["method"]) != config_hash(run_config(oft)["method"])
    # the family builds the pruner: VLA-Pruner's OpenVLA variant, recorded under its own name and config
    pruned = dataclasses.replace(ovla, pruner="vla_pruner", keep=0.3)
    assert isinstance(build_pruner(pruned), VLAPrunerOpenVLA)
    assert run_config(pruned)["method"]["pruner"]["name"] == "vla_pruner_openvla"


@pytest.mark.parametrize("kw,match", [
    ({"family": "pi9"}, r"unknown model family 'pi9'; expected one of \['oft', 'openvla', 'pi0', 'pi05'\]"),
    ({"family": None}, "unknown model family None"),
    ({"family": "openvla", "platform": "libero"}, "--platform 'libero' does not apply to --family openvla"),
])
def test_bad_family_fails_at_construction(fixed_ckpt, kw, match):
    with pytest.raises(ValueError, match=match):
        _job(fixed_ckpt, **kw)


def test_eval_command_refuses_an_unknown_family(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "libero", "--checkpoint", str(tiny_ckpt), "--suite", "libero_spatial", "--family", "pi9",
              "--log", str(tmp_path / "x.jsonl")])
    assert e.value.code == 2
    assert "--family: invalid choice: 'pi9' (choose from" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_sweep_grid_may_set_the_family(fixed_ckpt, tmp_path):
    cfgs = expand_grid({"grid": {"family": ["oft", "openvla"], "pruner": [None, "vla_pruner"]}, "base": {"keep": 0.3}})
    assert {(c.get("family"), c["pruner"]) for c in cfgs} == {(f, p) for f in ("oft", "openvla")
                                                            for p in (None, "vla_pruner")}
    assert all("family" not in c["fields"] for c in cfgs)
    chunks = plan(_job(fixed_ckpt), cfgs, ["libero_spatial"], tmp_path / "out", chunk=2)
    assert len({c.config_hash for c in chunks}) == 4
    by_family = {(c.job.family, c.job.pruner): c for c in chunks}
    assert by_family[("oft", None)].config_hash == PINNED[None][0]  # "family": "oft" is the plain OFT run
    assert isinstance(build_pruner(by_family[("openvla", "vla_pruner")].job), VLAPrunerOpenVLA)
    with pytest.raises(ValueError, match=r"config 0 .*unknown model family 'pi9'"):
        plan(_job(fixed_ckpt), expand_grid({"configs": [{"family": "pi9"}]}), ["libero_spatial"], tmp_path / "o")


def test_openvla_job_runs_serial_and_parallel_alike(tiny_openvla_ckpt, tmp_path, monkeypatch):
    """The toy env through run_job: serial, then two spawned simulator processes answered in batches."""
    monkeypatch.setitem(ENV_FACTORIES, "toy", "tests.eval_helpers")
    base = EvalJob(env="toy", suite="toy", checkpoint=str(tiny_openvla_ckpt), log="", tasks=(0, 1), episodes=(0, 1),
                   max_steps=6, family="openvla", pruner="adp", keep=0.5,
                   pruner_fields={"initial_state": 1}, verbose=False)
    serial = run_job(dataclasses.replace(base, log=str(tmp_path / "serial.jsonl")))
    parallel = run_job(dataclasses.replace(base, log=str(tmp_path / "parallel.jsonl"), envs=2))
    assert len(serial) == len(parallel) == 2 and all(r.error is None for r in serial + parallel)
    logs = [read_log(tmp_path / f"{name}.jsonl") for name in ("serial", "parallel")]
    assert logs[0].runs[0].config_hash == logs[1].runs[0].config_hash
    assert logs[0].runs[0].config["method"]["family"] == "openvla"
    queries = [sorted(log.all_queries(), key=lambda q: (q.task_id, q.query)) for log in logs]
    assert [q.query for q in queries[0]] == list(range(5)) * 2  # one action per query: success at step 5
    first = [q for q in queries[0] if q.query == 0]
    assert all(q.pruned and q.kept_visual == 128 for q in first)  # ADP's gate starts open (initial_state 1)
    assert not all(q.pruned for q in queries[0])  # and closes when the toy arm barely moves
    for a, b in zip(*queries):  # one query per forward in both runners: the same actions, so the same arm path
        assert (a.task_id, a.query, a.gate_state, a.kept_visual, a.flops, a.eef_pos, a.displacement) == \
            (b.task_id, b.query, b.gate_state, b.kept_visual, b.flops, b.eef_pos, b.displacement)
    assert [e.steps for e in sorted(serial, key=lambda r: r.task_id)] == \
        [e.steps for e in sorted(parallel, key=lambda r: r.task_id)]
