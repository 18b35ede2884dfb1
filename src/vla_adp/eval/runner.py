"""Closed-loop evaluation: ``run_episode`` → ``run_task`` → ``run_suite``, over any :class:`Env`.

The episode loop is OpenVLA-OFT's ``run_episode`` (moojink/openvla-oft ``experiments/robot/libero/run_libero_eval.py``) with the platform details moved into
the Env (wait steps and initial states in ``reset``, gripper post-processing in ``step``):

    obs = env.reset(episode); policy.reset()          # the pruner and its gate start afresh
    while steps < env.max_steps:
        chunk = policy.infer(obs)["actions"]           # one query -> log a QueryRecord
        for action in chunk[:open_loop]:               # 8 on LIBERO, executed open-loop
            result = env.step(action, images=last action of the chunk or recording a video)
            policy.record_step(result.obs["state"])
            if result.success: stop                    # success = the env's ``done``

In real-time mode (``settings.realtime``, :mod:`vla_adp.eval.realtime`) the actions the robot
executes while the policy thinks (the previous chunk's remaining actions, or holds) come before each
chunk; :class:`EpisodeProgress` keeps that bookkeeping for this loop and for the parallel runner
(:mod:`vla_adp.eval.parallel`), which steps the same episodes in simulator processes.

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
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterable

import numpy as np
import torch

from vla_adp.envs.base import Env
from vla_adp.eval.realtime import RealtimeConfig, query_latency, steps_elapsed, thinking_actions
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
        realtime: advance simulated time by each query's latency (:mod:`vla_adp.eval.realtime`);
            ``None`` = the world pauses while the policy thinks (every published protocol).
    """

    config_hash: str
    seed: int = 7
    open_loop: int | None = None
    log_indices: bool = False
    video_dir: str | None = None
    verbose: bool = True
    overlay_video_dir: str | None = None
    realtime: RealtimeConfig | None = None

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


class EpisodeProgress:
    """One episode's bookkeeping between queries; the serial and the parallel runners share it.

    ``answer`` turns a query's output into the actions to execute before the next query (logging
    the query); ``executed`` counts each executed step. In real-time mode the actions the robot
    executes while the policy thinks come first (:mod:`vla_adp.eval.realtime`).
    """

    def __init__(self, env, platform, settings: EpisodeSettings, rec: EpisodeRecord, episode: int):
        self.env, self.platform, self.settings, self.rec, self.episode = env, platform, settings, rec, episode
        self.open_loop = settings.open_loop or getattr(platform, "chunk", None)
        self.step = 0
        self.leftover: list[np.ndarray] = []  # actions of the last chunk beyond open_loop
        self.last: np.ndarray | None = None  # the last executed action
        rt = settings.realtime
        self.control_hz = None if rt is None else (rt.control_hz or _env_attr(env, "control_hz"))
        self.gripper_open = None if rt is None else _env_attr(env, "gripper_open")

    def answer(self, out: dict[str, Any], obs: dict, wall_s: float, policy,
               on_query: Callable[[QueryRecord], None] | None) -> list[np.ndarray]:
        actions = np.asarray(out["actions"])
        if actions.ndim != 2 or actions.shape[0] < self.open_loop:
            raise ValueError(f"policy returned actions of shape {actions.shape}; need (>= {self.open_loop}, action_dim)")
        info, thinking = out["info"], []
        rt = self.settings.realtime
        if rt is not None:
            latency = query_latency(rt, info, wall_s)
            k = steps_elapsed(latency, self.control_hz)
            thinking = thinking_actions(self.leftover, k, rt.thinking, self.last, actions.shape[1], self.gripper_open)
            info = {**info, "latency_s": latency, "latency_steps": k, "latency_source": rt.source}
        q = query_record(info, self.env, self.episode, self.step, obs, policy, self.settings)
        rec = self.rec
        rec.queries += 1
        rec.pruned_queries += int(q.pruned)
        rec.flops_total += q.flops
        # the unpruned cost of the same queries, where the policy reports it (speedup from logs)
        full = rec.flops_full_total
        rec.flops_full_total = None if full is None or q.flops_full is None else full + q.flops_full
        if on_query is not None:
            on_query(q)
        self.leftover = list(actions[self.open_loop:])
        return thinking + list(actions[:self.open_loop])

    def executed(self, action: np.ndarray) -> None:
        self.step += 1
        self.rec.steps += 1
        self.last = action

    @property
    def remaining(self) -> int:
        return self.env.max_steps - self.step


def _env_attr(env, name: str):
    value = getattr(env, name, None)
    if value is None:
        raise ValueError(f"real-time mode needs the env's {name!r}; {type(env).__name__} has none "
                         "(give control_hz in the RealtimeConfig, or add the attribute to the env)")
    return value


def _loop(env: Env, policy, episode: int, settings: EpisodeSettings, rec: EpisodeRecord,
          videos, on_query) -> None:
    seed_everything(settings.seed)
    obs = env.reset(episode)
    policy.reset()
    lazy = takes_images_hint(env)
    progress = EpisodeProgress(env, policy.platform, settings, rec, episode)
    while progress.remaining > 0:
        t0 = time.perf_counter()
        out = policy.infer(obs)
        segment = progress.answer(out, obs, time.perf_counter() - t0, policy, on_query)
        for i, action in enumerate(segment):
            if progress.remaining <= 0:
                return
            if videos is not None:  # frame t: the state before step t, under the chunk being executed
                videos.add(progress.step, env, obs, out["info"] if i == 0 else None)
            # images only where they are read: the next query, or every frame of a video
            images = videos is not None or i == len(segment) - 1
            result = env.step(action, images=images) if lazy else env.step(action)
            progress.executed(action)
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
    if settings.realtime is not None:  # a missing control rate fails here, not as an error in every episode
        EpisodeProgress(env, None, settings, None, 0)
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
