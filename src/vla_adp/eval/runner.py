"""Closed-loop evaluation: ``run_episode`` → ``run_task`` → ``run_suite``, over any :class:`Env`.

The episode loop is OpenVLA-OFT's ``run_episode`` (spec §5.3) with the platform details moved into
the Env (wait steps and initial states in ``reset``, gripper post-processing in ``step``):

    obs = env.reset(episode); policy.reset()          # the pruner and its gate start afresh
    for step in range(env.max_steps):
        if the action queue is empty:
            chunk = policy.infer(obs)["actions"]       # one query -> log a QueryRecord
            queue the first ``open_loop`` actions      # 8 on LIBERO, executed open-loop
        result = env.step(queue.pop(), images=queue empty or recording a video)
        policy.record_step(result.obs["state"])
        if result.success: stop                        # success = the env's ``done``

Camera images are built only for the steps whose observation the policy (or a video) reads; the
simulation is identical either way (tests/test_metaworld.py checks it). On Meta-World, rendering both
cameras is most of a simulator step.

Every episode ends in one :class:`EpisodeRecord`. An exception inside an episode is caught there,
printed with its traceback, logged in ``error`` and counted as a failure (the reference counts it
as a failure too, but only prints it). Seeds (torch, numpy, python) are set before every episode,
not once per run as in the reference, so an episode's result does not depend on which episodes ran
before it in the same process (resumed runs, Ray chunks).
"""

from __future__ import annotations

import inspect
import random
import time
import traceback
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable

import numpy as np
import torch

from vla_adp.envs.base import Env
from vla_adp.eval.schema import EpisodeRecord, QueryRecord

QUERY_FIELDS = {f.name for f in fields(QueryRecord)}
# QueryRecord fields the runner fills itself, never from ``info``.
RUNNER_FIELDS = {"config_hash", "suite", "task_id", "task", "episode", "step", "eef_pos", "kind"}


@dataclass(frozen=True)
class EpisodeSettings:
    """How episodes run and what they log.

    Args:
        config_hash: the run's identity (see :func:`vla_adp.eval.logs.config_hash`).
        seed: torch/numpy/python seed set before every episode (the reference's 7).
        open_loop: actions executed per query; ``None`` = the whole chunk (8 on LIBERO).
        log_indices: also log the kept visual-token indices of every query (large).
        video_dir: write an mp4 of every episode here (upright agentview, 30 fps); ``None`` = off.
        verbose: print one line per episode (and tracebacks).
        overlay_video_dir: write an overlay mp4 of every episode here (every camera the policy saw,
            the chunk's keep mask, gate state, displacement, kept count; 10 fps); ``None`` = off.
            See :mod:`vla_adp.eval.video`.
    """

    config_hash: str
    seed: int = 7
    open_loop: int | None = None
    log_indices: bool = False
    video_dir: str | None = None
    verbose: bool = True
    overlay_video_dir: str | None = None

    def __post_init__(self) -> None:
        if self.open_loop is not None and (not isinstance(self.open_loop, int) or self.open_loop < 1):
            raise ValueError(f"open_loop must be a positive int or None, got {self.open_loop!r}")


def seed_everything(seed: int) -> None:
    """The reference's ``set_seed_everywhere``: torch (+CUDA, deterministic cuDNN), numpy, random."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def query_record(info: dict[str, Any], env: Env, episode: int, step: int, obs: dict, policy,
                 settings: EpisodeSettings) -> QueryRecord:
    """A QueryRecord from ``infer()``'s info; keys the schema does not know go to ``extra``."""
    known = {k: v for k, v in info.items() if k in QUERY_FIELDS and k not in RUNNER_FIELDS}
    extra = {k: v for k, v in info.items() if k not in QUERY_FIELDS}
    if not settings.log_indices:
        known.pop("kept_indices", None)
    known.setdefault("gate_state", None)
    known.setdefault("displacement", None)
    pos = getattr(policy.platform, "eef_pos", None)
    eef = np.asarray(obs["state"], np.float64)[slice(*pos)].tolist() if pos and "state" in obs else None
    return QueryRecord(config_hash=settings.config_hash, suite=env.suite, task_id=env.task_id, task=env.task,
                       episode=episode, step=step, eef_pos=eef, extra=extra, **known)


def _act(policy, obs: dict, queue: deque, open_loop: int) -> dict[str, Any]:
    out = policy.infer(obs)
    actions = np.asarray(out["actions"])
    if actions.ndim != 2 or actions.shape[0] < open_loop:
        raise ValueError(f"policy returned actions of shape {actions.shape}; need (>= {open_loop}, action_dim)")
    queue.extend(actions[:open_loop])
    return out["info"]


def takes_images_hint(env) -> bool:
    """Whether ``env.step`` accepts ``images=`` (the Env protocol's hint); envs written before it
    still run, rendering every step."""
    try:
        return "images" in inspect.signature(env.step).parameters
    except (TypeError, ValueError):
        return False


def run_episode(env: Env, policy, episode: int, settings: EpisodeSettings,
                on_query: Callable[[QueryRecord], None] | None = None) -> EpisodeRecord:
    """Run one episode; never raises for errors inside the episode (they land in ``error``)."""
    t0 = time.perf_counter()
    rec = EpisodeRecord(settings.config_hash, env.suite, env.task_id, env.task, episode, settings.seed,
                        success=False, steps=0, queries=0, pruned_queries=0, flops_total=0.0, wall_s=0.0,
                        flops_full_total=0.0)
    videos = None
    if settings.video_dir or settings.overlay_video_dir:
        from vla_adp.eval.video import EpisodeVideos

        videos = EpisodeVideos(rec, policy, settings.video_dir, settings.overlay_video_dir)
    try:
        _loop(env, policy, episode, settings, rec, videos, on_query)
    except Exception:  # noqa: BLE001 - logged with its traceback and counted, never swallowed
        rec.error = traceback.format_exc()
        if settings.verbose:
            print(f"[{env.suite} task {env.task_id} episode {episode}] episode error:\n{rec.error}", flush=True)
    rec.wall_s = time.perf_counter() - t0
    if videos is not None:
        videos.finish(rec)
    return rec


def _loop(env: Env, policy, episode: int, settings: EpisodeSettings, rec: EpisodeRecord,
          videos, on_query) -> None:
    seed_everything(settings.seed)
    obs = env.reset(episode)
    policy.reset()
    open_loop = settings.open_loop or policy.platform.chunk
    lazy = takes_images_hint(env)
    queue: deque = deque()
    for step in range(env.max_steps):
        info = None
        if not queue:
            info = _act(policy, obs, queue, open_loop)
            q = query_record(info, env, episode, step, obs, policy, settings)
            rec.queries += 1
            rec.pruned_queries += int(q.pruned)
            rec.flops_total += q.flops
            # the unpruned cost of the same queries, where the policy reports it (speedup from logs)
            full = rec.flops_full_total
            rec.flops_full_total = None if full is None or q.flops_full is None else full + q.flops_full
            if on_query is not None:
                on_query(q)
        if videos is not None:  # frame t: the state before step t, under the chunk being executed
            videos.add(step, env, obs, info)
        # images only where they are read: the next query, or every frame of a video
        action, images = queue.popleft(), videos is not None or not queue
        result = env.step(action, images=images) if lazy else env.step(action)
        rec.steps += 1
        obs = result.obs
        policy.record_step(obs["state"])
        if result.success:
            rec.success = True
            return


def run_task(env: Env, policy, episodes: Iterable[int], settings: EpisodeSettings, writer=None,
             done: set[tuple[str, int, int]] = frozenset()) -> list[EpisodeRecord]:
    """Episodes of one task in order, skipping those in ``done`` (resume), logging to ``writer``."""
    episodes = list(episodes)
    available = getattr(env, "n_episodes", None)  # LIBERO: 50 initial states per task
    if available is not None and episodes and not 0 <= min(episodes) <= max(episodes) < available:
        raise ValueError(f"{env.suite} task {env.task_id} has episodes 0..{available - 1}, "
                         f"asked for {min(episodes)}..{max(episodes)}")
    records = []
    on_query = writer.write if writer is not None else None
    for ep in episodes:
        if (env.suite, env.task_id, ep) in done:
            continue
        rec = run_episode(env, policy, ep, settings, on_query)
        if writer is not None:
            writer.write(rec)
        records.append(rec)
        if settings.verbose:
            _print_episode(rec, records)
    return records


def _print_episode(rec: EpisodeRecord, so_far: list[EpisodeRecord]) -> None:
    wins = sum(r.success for r in so_far)
    status = "error" if rec.error else ("success" if rec.success else "failure")
    print(f"[{rec.suite} task {rec.task_id} episode {rec.episode}] {status}: {rec.steps} steps, "
          f"{rec.queries} queries ({rec.pruned_queries} pruned), {rec.wall_s:.1f} s | task so far: "
          f"{wins}/{len(so_far)} ({100 * wins / len(so_far):.1f}%)", flush=True)


def run_suite(make_env: Callable[[int], Env], task_ids: Iterable[int], episodes: Iterable[int], policy,
              settings: EpisodeSettings, writer=None,
              done: set[tuple[str, int, int]] = frozenset(), suite: str | None = None) -> list[EpisodeRecord]:
    """Every task in ``task_ids``: one Env each (made by ``make_env(task_id)``, closed after).

    With ``suite`` given, a task whose episodes are all in ``done`` is skipped without making its env.
    """
    episodes = list(episodes)
    records = []
    for task_id in task_ids:
        if suite is not None and all((suite, task_id, ep) in done for ep in episodes):
            continue
        env = make_env(task_id)
        try:
            records += run_task(env, policy, episodes, settings, writer, done)
        finally:
            env.close()
    return records
