"""Sweeps over pruning configs on Ray: one task per (config, suite, task, episode chunk).

Grid file (JSON)::

    {
      "grid":    {"pruner": ["adp"], "keep": [0.3, 0.5, 0.7], "window": [3, 5]},
      "configs": [{"pruner": null}],
      "base":    {"layer": 0}
    }

``grid`` is a Cartesian product, ``configs`` are extra explicit configs, ``base`` is merged into
every entry. Keys ``pruner``, ``keep`` and ``pruning_config`` go to ``build_pruner`` as such;
``family`` sets the model family of the checkpoint (default: ``--family``), ``protocol`` the env
adapter's protocol (default: ``--protocol``; π0 / π0.5 on LIBERO: ``lerobot``, ``openpi``); every
other key is a pruner setting (ours or the reference's names: ``qk_layer``, ``decision_method``,
...). An entry with ``"pruner": null`` is the unpruned baseline (its other keys are dropped).
Every config is built once before anything runs, so a typo fails at once and names the entry.

Each Ray task writes its own JSONL file, ``OUT/{config_hash}/{suite}-task{t}-ep{a}-{b}.jsonl``; a
rerun skips finished episodes from those files (chunks already complete never start), and the
report merges the folder by reading every file. Workers get this package through Ray's
``py_modules``, so a cluster runs the driver's code.

With ``--envs N`` a Ray task is one batched worker: N simulator processes and one model copy
(:mod:`vla_adp.eval.parallel`), reserving N CPUs; give it a large ``--chunk`` (e.g. 50) so the
simulators stay busy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vla_adp.utils.files import read_json
from vla_adp.eval.job import EvalJob, build_pruner, run_config, run_job, task_ids
from vla_adp.eval.logs import config_hash, finished_episodes, jsonable

PRUNER_KEYS = ("pruner", "keep", "pruning_config")
JOB_KEYS = ("family", "protocol")  # EvalJob fields a grid entry may set besides the pruner
GRID_KEYS = ("grid", "configs", "base")


# -- grid ----------------------------------------------------------------------------------
def _as_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def expand_grid(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct configs of a grid spec, in a stable order (see the module docstring)."""
    spec = _as_dict(spec, "grid file")
    unknown = sorted(set(spec) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"unknown grid file keys {unknown}; expected {list(GRID_KEYS)}")
    base = _as_dict(spec.get("base", {}), "'base'")
    grid = _as_dict(spec.get("grid", {}), "'grid'")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ValueError(f"grid[{k!r}] must be a non-empty list of values, got {v!r}")
    entries = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else []
    extra = spec.get("configs", [])
    if not isinstance(extra, list):
        raise ValueError(f"'configs' must be a list of objects, got {type(extra).__name__}")
    entries += [_as_dict(c, f"configs[{i}]") for i, c in enumerate(extra)]
    if not entries:
        raise ValueError("grid file defines no config (give 'grid' and/or 'configs')")
    out, seen = [], set()
    for e in entries:
        cfg = normalise({**base, **e})
        key = json.dumps(cfg, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def normalise(entry: dict[str, Any]) -> dict[str, Any]:
    """{"pruner", "keep", "pruning_config", "fields"} plus the :data:`JOB_KEYS` the entry sets; the
    baseline keeps no pruner settings."""
    cfg = {k: entry.get(k) for k in PRUNER_KEYS}
    job = {k: entry[k] for k in JOB_KEYS if k in entry}
    fields = {k: v for k, v in entry.items() if k not in PRUNER_KEYS and k not in JOB_KEYS}
    if cfg["pruner"] is None and cfg["pruning_config"] is None:
        return {"pruner": None, "keep": None, "pruning_config": None, "fields": {}, **job}
    return {**cfg, "fields": fields, **job}


def read_grid(path: str | Path) -> list[dict[str, Any]]:
    return expand_grid(read_json(path, "grid file", expect=None))


# -- planning ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    job: EvalJob
    config_hash: str
    todo: int  # episodes not yet in its log


def with_config(template: EvalJob, cfg: dict[str, Any]) -> EvalJob:
    return dataclasses.replace(template, pruner=cfg["pruner"], keep=cfg["keep"], pruning_config=cfg["pruning_config"],
                               pruner_fields=dict(cfg["fields"]), **{k: cfg[k] for k in JOB_KEYS if k in cfg})


def plan(template: EvalJob, configs: list[dict[str, Any]], suites: list[str], out: str | Path,
         chunk: int = 10) -> list[Chunk]:
    """Every (config, suite, task, episode chunk) with its log file; fails early on a bad config."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1 episode, got {chunk!r}")
    start, stop = template.episodes
    chunks = []
    for i, cfg in enumerate(configs):
        for suite in suites:
            try:
                job = with_config(dataclasses.replace(template, suite=suite), cfg)
                h = config_hash(run_config(job, build_pruner(job)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"config {i} {json.dumps(jsonable(cfg))}: {e}") from None
            for t in task_ids(job):
                folder = Path(out) / h
                files = sorted(folder.glob(f"{suite}-task{t:02d}-ep*.jsonl"))
                logs = {p.name: finished_episodes([p], h) for p in files}
                for a in range(start, stop, chunk):
                    chunks += chunk_parts(job, h, folder, suite, t, (a, min(a + chunk, stop)), logs)
    return chunks


def chunk_parts(job: EvalJob, h: str, folder: Path, suite: str, task: int, span: tuple[int, int],
                logs: dict[str, set[tuple[str, int, int]]]) -> list[Chunk]:
    """The chunk ``span`` of one task, logged to its own file; where that file does not exist but
    another chunking (a rerun with another ``--chunk``) logged some of its episodes, only the runs of
    episodes that no log of the task has yet, each with its own file — a resumed sweep never reruns
    a finished episode. ``logs``: the finished episodes of each existing log file of the task."""
    def name(a: int, b: int) -> str:
        return f"{suite}-task{task:02d}-ep{a:03d}-{b:03d}.jsonl"

    def part(a: int, b: int, done: set) -> Chunk:
        job_ab = dataclasses.replace(job, tasks=(task,), episodes=(a, b), log=str(folder / name(a, b)))
        return Chunk(job_ab, h, sum((suite, task, e) not in done for e in range(a, b)))

    a, b = span
    if name(a, b) in logs:  # resume the chunk's own file (its runner skips what that file holds)
        return [part(a, b, logs[name(a, b)])]
    logged = set().union(*logs.values())
    missing = [e for e in range(a, b) if (suite, task, e) not in logged]
    if len(missing) in (0, b - a):
        return [part(a, b, logged)]
    starts = [e for i, e in enumerate(missing) if i == 0 or missing[i - 1] != e - 1]  # contiguous runs
    ends = [e + 1 for i, e in enumerate(missing) if i + 1 == len(missing) or missing[i + 1] != e + 1]
    return [part(s, e, logged) for s, e in zip(starts, ends)]


# -- running -------------------------------------------------------------------------------
def run_chunk(job: EvalJob, threads: int = 1) -> dict[str, Any]:
    """What a Ray worker runs: one chunk, logged to its own file."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    records = run_job(job)
    return {"log": job.log, "episodes": len(records), "successes": sum(r.success for r in records),
            "errors": sum(r.error is not None for r in records), "wall_s": time.perf_counter() - t0}


def _runtime_env(threads: int) -> dict[str, Any]:
    import vla_adp

    gl = os.environ.get("MUJOCO_GL", "egl")
    env_vars = {"MUJOCO_GL": gl, "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", gl),
                "OMP_NUM_THREADS": str(threads)}
    return {"py_modules": [str(Path(vla_adp.__file__).parent)], "env_vars": env_vars}


def run_sweep(chunks: list[Chunk], address: str | None = None, num_cpus: int | None = None,
              gpus_per_task: float = 0.0, threads: int = 1) -> list[dict[str, Any]]:
    """Run the unfinished chunks on Ray; a chunk that fails outright is reported, not fatal."""
    import ray

    todo = [c for c in chunks if c.todo]
    if not todo:
        return []
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 runtime_env=_runtime_env(threads), logging_level="WARNING")
    try:
        task = ray.remote(num_cpus=threads, num_gpus=gpus_per_task, max_retries=0)(run_chunk)
        # a chunk with envs > 1 is one batched worker: its simulator processes need a CPU each
        pending = {task.options(num_cpus=max(threads, c.job.envs)).remote(c.job, threads): c for c in todo}
        return _collect(ray, pending)
    finally:
        if started:
            ray.shutdown()


def _collect(ray, pending: dict) -> list[dict[str, Any]]:
    results = []
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        chunk = pending.pop(ready[0])
        try:
            res = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - e.g. env creation failed: report, keep the others going
            res = {"log": chunk.job.log, "episodes": 0, "successes": 0, "errors": 0, "failed": str(e)}
        results.append(res)
        status = f"FAILED: {res['failed'].strip().splitlines()[-1]}" if "failed" in res else \
            f"{res['successes']}/{res['episodes']} successes, {res['errors']} errors, {res['wall_s']:.0f} s"
        print(f"[sweep {len(results)}/{len(results) + len(pending)}] {res['log']}: {status}", flush=True)
    return results
