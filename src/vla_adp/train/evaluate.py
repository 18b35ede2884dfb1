"""A minimal closed-loop Meta-World evaluation for the reference policy (interim, see below).

    reset(episode) ─► query ─► execute the 8-action chunk open-loop ─► re-query ─► ... until success
                                                                          or max_steps

One ``episode`` JSON line per episode (:class:`~vla_adp.eval.schema.EpisodeRecord`), appended as it
finishes; a rerun skips every (config_hash, task, episode) already logged, so an interrupted
evaluation resumes without repeating or losing an episode. Success rates come with Wilson 95 %
intervals. The shared evaluation runner (``vla_adp.eval.runner``) supersedes this loop once it is on
main; the records are the same, so its reports read these logs too.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from vla_adp.eval.schema import EpisodeRecord


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_episode(policy, env, episode: int, chash: str = "") -> EpisodeRecord:
    """Roll the policy out in ``env`` from ``episode``'s seeded initial state."""
    t0 = time.perf_counter()
    obs = env.reset(episode)
    policy.reset()
    steps = queries = pruned = 0
    flops = 0.0
    success = False
    while steps < env.max_steps and not success:
        out = policy.infer(obs)
        queries += 1
        pruned += int(out["info"]["pruned"])
        flops += float(out["info"]["flops"])
        for action in out["actions"]:
            result = env.step(action)
            steps += 1
            policy.record_step(result.obs["state"])
            obs, success = result.obs, result.success
            if success or steps >= env.max_steps:
                break
    return EpisodeRecord(chash, env.suite, env.task_id, env.task, episode, env.seed, success, steps, queries,
                         pruned, flops, time.perf_counter() - t0)


def done_keys(log: Path) -> set[tuple[str, str, int]]:
    if not log.is_file():
        return set()
    keys = set()
    for line in log.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if rec.get("kind") == "episode":
                keys.add((rec["config_hash"], rec["task"], rec["episode"]))
    return keys


def evaluate(policy, tasks: list[str], episodes: range, log: str | Path, config: dict[str, Any],
             image_size: int | None = None, progress=None) -> dict[str, Any]:
    """Evaluate ``policy`` on held-out goals (``eval`` split) of every task; append to ``log``.

    Args:
        episodes: eval-split episode indices (seeds ``1_000_000 + episode``).
        config: what defines the run (checkpoint, pruner settings); hashed into every record.
        progress: optional callable(record) after each episode.
    """
    from vla_adp.envs.metaworld import MetaWorldEnv

    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    chash = config_hash(config)
    done = done_keys(log)
    size = image_size or policy.model.args.image_size
    for task_id, task in enumerate(tasks):
        todo = [e for e in episodes if (chash, task, e) not in done]
        if not todo:
            continue
        env = MetaWorldEnv(task, image_size=size, split="eval", task_id=task_id)
        try:
            for e in todo:
                rec = run_episode(policy, env, e, chash)
                with open(log, "a") as f:
                    f.write(json.dumps(rec.to_dict()) + "\n")
                if progress is not None:
                    progress(rec)
        finally:
            env.close()
    return summarize(log, chash, tasks, episodes)


def summarize(log: str | Path, chash: str, tasks: list[str], episodes: range) -> dict[str, Any]:
    """Per-task success, Wilson interval and seeds, read back from the log."""
    recs = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    recs = [r for r in recs if r.get("kind") == "episode" and r["config_hash"] == chash and r["episode"] in episodes]
    table = {}
    for task in tasks:
        rows = [r for r in recs if r["task"] == task]
        k, n = sum(r["success"] for r in rows), len(rows)
        lo, hi = wilson(k, n)
        table[task] = {"success": k / max(n, 1), "n": n, "wilson95": [round(lo, 3), round(hi, 3)],
                       "seeds": [min((r["seed"] for r in rows), default=None), max((r["seed"] for r in rows), default=None)],
                       "mean_steps": float(np.mean([r["steps"] for r in rows])) if rows else None}
    mean = float(np.mean([v["success"] for v in table.values()])) if table else 0.0
    return {"config_hash": chash, "tasks": table, "average": mean}
