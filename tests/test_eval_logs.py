"""JSONL run logs: fsync'd appends, truncated tails, interrupted attempts, config hashes, resume sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla_adp.eval.logs import (LogWriter, checkpoint_identity, config_hash, finished_episodes, read_log, read_logs,
                               repair_tail)
from vla_adp.eval.schema import EpisodeRecord, QueryRecord


def episode(ep: int, h: str = "h1", success: bool = True, task_id: int = 0) -> EpisodeRecord:
    return EpisodeRecord(h, "libero_spatial", task_id, "task", ep, 7, success, steps=10, queries=2,
                         pruned_queries=1, flops_total=3.0, wall_s=1.0, flops_full_total=4.0)


def query(ep: int, q: int, h: str = "h1") -> QueryRecord:
    return QueryRecord(h, "libero_spatial", 0, "task", ep, q, 8 * q, "adp", bool(q % 2), q % 2, 0.1, 256, 512,
                       [100, 156], 350, 350, 1.5, {"llm": 1.0}, extra={"x": np.float32(0.5)})


def test_config_hash_is_canonical():
    a = {"suite": "libero_spatial", "method": {"seed": 7, "pruner": {"keep": 0.5}}}
    b = {"method": {"pruner": {"keep": 0.5}, "seed": 7}, "suite": "libero_spatial"}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16
    assert config_hash({**a, "suite": "libero_goal"}) != config_hash(a)
    assert config_hash({"split": (0.4, 0.6)}) == config_hash({"split": [0.4, 0.6]})


def test_checkpoint_identity_changes_with_its_files(tiny_ckpt, tmp_path):
    ident = checkpoint_identity(tiny_ckpt)
    assert ident["name"] == tiny_ckpt.name and "config.json" in ident["files"]
    other = tmp_path / tiny_ckpt.name
    other.mkdir()
    for f in tiny_ckpt.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    assert checkpoint_identity(other) == ident  # same files elsewhere: same identity
    stats = json.loads((other / "dataset_statistics.json").read_text())
    stats["extra"] = stats[next(iter(stats))]
    (other / "dataset_statistics.json").write_text(json.dumps(stats))
    assert checkpoint_identity(other) != ident


def test_round_trip_and_query_lines_commit_with_their_episode(tmp_path):
    log = tmp_path / "run.jsonl"
    with LogWriter(log) as w:
        w.write(query(0, 0))
        w.write(query(0, 1))
        w.write(episode(0))
        w.write(query(1, 0))  # episode 1 interrupted here ...
        w.write(query(1, 0))  # ... and restarted
        w.write(query(1, 1))
        w.write(episode(1))
        w.write(query(2, 0))  # killed during episode 2
    logs = read_log(log)
    assert [e.episode for e in logs.episodes.values()] == [0, 1]
    assert [(q.episode, q.query) for q in logs.all_queries()] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert logs.dropped_queries == 2
    assert logs.all_queries()[0].extra == {"x": 0.5} and logs.all_queries()[0].kept_per_view == [100, 156]
    assert list(logs.episodes.values())[0] == episode(0)


def test_truncated_last_line_is_tolerated_then_repaired(tmp_path):
    log = tmp_path / "run.jsonl"
    with LogWriter(log) as w:
        w.write(episode(0))
        w.write(episode(1))
    full = log.read_bytes()
    log.write_bytes(full[:-25])  # killed in the middle of writing episode 1
    with pytest.warns(UserWarning, match="truncated last line"):
        assert [e.episode for e in read_log(log).episodes.values()] == [0]
    with pytest.warns(UserWarning, match="unterminated"):
        with LogWriter(log) as w:  # appending first cuts the partial line
            w.write(episode(1))
    assert log.read_bytes() == full
    assert [e.episode for e in read_log(log).episodes.values()] == [0, 1]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps(episode(0).to_dict()))
    assert repair_tail(log) == 0
    assert log.read_text().endswith("\n")
    assert [e.episode for e in read_log(log).episodes.values()] == [0]


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    log = tmp_path / "run.jsonl"
    lines = [json.dumps(episode(0).to_dict()), "{not json", json.dumps(episode(1).to_dict())]
    log.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"run.jsonl:2: not valid JSON, a corrupt log line"):
        read_log(log)
    log.write_text(json.dumps({"kind": "episode", "suite": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"run.jsonl:1: not a valid episode record"):
        read_log(log)
    log.write_text(json.dumps({"kind": "banana"}) + "\n")
    with pytest.raises(ValueError, match="kind in"):
        read_log(log)


def test_read_logs_merges_folders_and_drops_duplicate_episodes(tmp_path):
    (tmp_path / "a").mkdir()
    with LogWriter(tmp_path / "a" / "x.jsonl") as w:
        w.write(episode(0))
        w.write(episode(1))
    with LogWriter(tmp_path / "y.jsonl") as w:
        w.write(episode(1))
        w.write(episode(2, h="h2"))
    with pytest.warns(UserWarning, match="1 duplicate episode"):
        logs = read_logs([tmp_path])
    assert sorted((e.config_hash, e.episode) for e in logs.episodes.values()) == [("h1", 0), ("h1", 1), ("h2", 2)]
    with pytest.raises(FileNotFoundError, match="log not found"):
        read_logs([tmp_path / "missing.jsonl"])


def test_finished_episodes_are_per_config(tmp_path):
    log = tmp_path / "run.jsonl"
    assert finished_episodes([log], "h1") == set()  # no file yet: nothing done
    with LogWriter(log) as w:
        w.write(episode(0))
        w.write(episode(3, task_id=2))
        w.write(episode(1, h="h2"))
    assert finished_episodes([log], "h1") == {("libero_spatial", 0, 0), ("libero_spatial", 2, 3)}
    assert finished_episodes([log], "h2") == {("libero_spatial", 0, 1)}


def test_concatenated_and_resumed_logs_count_every_episode_and_query_once(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    with LogWriter(a) as w:
        for rec in (query(0, 0), query(0, 1), episode(0), query(1, 0)):  # killed in episode 1
            w.write(rec)
    with LogWriter(b) as w:  # another machine (or a rerun into a fresh file) ran episodes 0 and 1
        for rec in (query(0, 0), query(0, 1), episode(0, success=False), query(1, 0), query(1, 1), episode(1)):
            w.write(rec)
    (tmp_path / "cat.jsonl").write_bytes(a.read_bytes() + b.read_bytes())
    for paths in ([a, b], [a, a, b, b], [tmp_path / "cat.jsonl"]):
        with pytest.warns(UserWarning, match="duplicate episode"):
            logs = read_logs(paths)
        assert sorted(logs.episodes) == [("h1", "libero_spatial", 0, 0), ("h1", "libero_spatial", 0, 1)]
        assert logs.episodes[("h1", "libero_spatial", 0, 0)].success  # the first record read wins
        assert [(q.episode, q.query) for q in logs.all_queries()] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert logs.dropped_queries >= 1 and logs.duplicate_episodes >= 1


def test_records_with_bad_keys_or_empty_folders_are_errors(tmp_path):
    log = tmp_path / "run.jsonl"
    log.write_text(json.dumps({**episode(0).to_dict(), "episode": "3"}) + "\n")
    with pytest.raises(ValueError, match=r"run.jsonl:1: not a valid episode record: episode='3' \(expected .*episode: int"):
        read_log(log)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.jsonl logs under"):
        read_logs([tmp_path / "empty"])
    log.write_text(json.dumps({"kind": "run", "config_hash": "h", "method_hash": "m", "config": {}}) + "\n")
    assert read_log(log).method_of("h") == "m" and read_log(log).method_of("other") == "other"


# -- one writer per log --------------------------------------------------------------------------
def hold_lock_in_another_process(log):
    """A real second process holding the log's lock until killed; returns it once the lock is held."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    code = ("import sys, time; from vla_adp.eval.logs import LogLock\n"
            f"lock = LogLock({str(log)!r}).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_on_a_log_refuses_naming_the_holder_until_it_dies(tmp_path):
    import socket

    from vla_adp.eval.logs import LogBusy, LogLock

    log = tmp_path / "run.jsonl"
    proc = hold_lock_in_another_process(log)
    try:
        with pytest.raises(LogBusy) as e:
            LogLock(log).acquire()
        msg = str(e.value)
        assert f"pid {proc.pid} on host {socket.gethostname()}" in msg and str(log) in msg and "--worker" in msg
    finally:
        proc.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        proc.wait()
    with LogLock(log) as lock:
        assert lock.fd is not None
    with LogLock(log):  # released by the context manager
        pass


def test_two_evaluations_on_one_log_do_not_interleave(tiny_ckpt, tmp_path, monkeypatch):
    """While one evaluation holds the log, a second run_job on it refuses before writing anything;
    once the first is done the second resumes and runs only what is missing."""
    from vla_adp.eval.job import ENV_FACTORIES, EvalJob, run_job
    from vla_adp.eval.logs import LogBusy, LogLock

    monkeypatch.setitem(ENV_FACTORIES, "toy", "tests.eval_helpers")
    log = tmp_path / "toy.jsonl"
    job = EvalJob(env="toy", suite="toy", checkpoint=str(tiny_ckpt), log=str(log), tasks=(0,), episodes=(0, 2),
                  verbose=False)
    with LogLock(log):  # the first run, mid-way
        with pytest.raises(LogBusy, match=f"pid {__import__('os').getpid()}"):
            run_job(job)
        assert not log.exists() or log.read_bytes() == b""
    assert [r.episode for r in run_job(job)] == [0, 1]
    assert run_job(job) == []
    assert read_log(log).dropped_queries == 0


def test_per_worker_logs_share_the_work(tiny_ckpt, tmp_path, monkeypatch, capsys):
    from vla_adp.cli import main
    from vla_adp.eval.job import ENV_FACTORIES
    from vla_adp.eval.logs import sibling_logs, worker_log

    monkeypatch.setitem(ENV_FACTORIES, "toy", "tests.eval_helpers")
    log = tmp_path / "toy.jsonl"
    common = ["eval", "toy", "--checkpoint", str(tiny_ckpt), "--suite", "toy", "--tasks", "0", "--log", str(log),
              "--device", "cpu", "--dtype", "fp32", "--quiet"]
    assert main(common + ["--trials", "2", "--worker", "gpu-a"]) == 0
    assert main(common + ["--trials", "3", "--worker", "gpu-b"]) == 0  # only episode 2 is left for b
    out = capsys.readouterr().out
    a, b = worker_log(log, "gpu-a"), worker_log(log, "gpu-b")
    assert a.name == "toy.worker-gpu-a.jsonl" and sibling_logs(log) == [a, b] == sibling_logs(b)
    assert sorted(k[3] for k in read_log(a).episodes) == [0, 1]
    assert sorted(k[3] for k in read_log(b).episodes) == [2]
    assert "3/3 successes" in out.splitlines()[-2] and not log.exists()
    assert main(common + ["--trials", "3"]) == 0  # the shared log itself: its own resume set, runs everything
    assert len(read_log(log).episodes) == 3
    with pytest.raises(ValueError, match="worker name"):
        worker_log(log, "a/b")
