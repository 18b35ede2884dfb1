"""Parallel evaluation: N simulator processes, one policy answering their queries in batches.

    main process (policy, pruner sessions, logs)              N simulator processes (spawned)
      episodes to run ─► slot k: "reset (task, episode)" ──────► seed, env.reset ─► first obs
      all slots waiting ─► Policy.infer_batch(obs of every slot, its session)
      EpisodeProgress.answer ─► slot k: "run these actions" ──► env.step each, stop on success
                                                                 ─► states after every step, last obs
      episode over ─► EpisodeRecord to the log, the slot takes the next episode

Each episode keeps its own :class:`~vla_adp.policy.Session` (its pruner: ADP's gate, VLA-Pruner's
history) and its own :class:`~vla_adp.eval.runner.EpisodeProgress`, the same bookkeeping the serial
runner uses, and the simulator process sets the seeds before ``env.reset`` as the serial runner does.
The policy answers when every busy slot is waiting for it (lock-step), so which queries share a
forward depends only on the episodes, never on timing: a run is reproducible for a given ``envs`` and
``batch``. ``batch=1`` answers the queries one at a time with :meth:`Policy.infer`: every episode is
bit-identical to the serial runner's. With ``batch > 1`` queries of equal prompt length share
one forward (:func:`vla_adp.model.batched.forward_rows`); at fp32 on a CPU the forward is
batch-invariant (:mod:`vla_adp.model.invariance`), so these episodes are bit-identical too.

Logs are the serial runner's: query lines as they happen (episodes interleave; each line names its
episode), one episode line when an episode ends; a rerun skips finished episodes. Videos need the
serial runner (``envs=1``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_adp.eval.runner import EpisodeProgress, EpisodeSettings, _print_episode, seed_everything
from vla_adp.eval.schema import EpisodeRecord

ENV_ATTRS = ("suite", "task_id", "task", "instruction", "max_steps", "control_hz", "gripper_open")


@dataclass
class EnvInfo:
    """What the main process knows of a slot's env (the env itself lives in the simulator process)."""

    suite: str
    task_id: int
    task: str
    instruction: str
    max_steps: int
    control_hz: float | None = None
    gripper_open: float | None = None


@dataclass(frozen=True)
class EnvSpec:
    """How a simulator process makes its envs: ``make_env`` of an env module (see vla_adp.eval.job)."""

    module: str
    suite: str
    max_steps: int | None = None
    render: str = "faithful"
    image_size: int = 224
    extra: dict[str, Any] = field(default_factory=dict)  # further make_env keywords (LIBERO camera_size)

    def task_name(self, task_id: int) -> str:
        import importlib

        return importlib.import_module(self.module).suite_tasks(self.suite)[task_id]

    def make(self, task_id: int):
        import importlib

        mod = importlib.import_module(self.module)
        return mod.make_env(self.suite, task_id, max_steps=self.max_steps, render=self.render,
                            image_size=self.image_size, **self.extra)


def simulator(conn, spec: EnvSpec, seed: int, threads: int = 1) -> None:
    """The loop of one simulator process: ``reset``/``run``/``close`` messages, one reply each."""
    import torch

    torch.set_num_threads(threads)
    env, task = None, None
    while True:
        msg = conn.recv()
        try:
            if msg[0] == "close":
                break
            if msg[0] == "reset":
                _, task_id, episode = msg
                if task != task_id:
                    if env is not None:
                        env.close()
                    env, task = None, None
                    env, task = spec.make(task_id), task_id
                n = getattr(env, "n_episodes", None)
                if n is not None and not 0 <= episode < n:
                    raise ValueError(f"{env.suite} task {task_id} has episodes 0..{n - 1}, asked for {episode}")
                seed_everything(seed)
                obs = env.reset(episode)
                info = EnvInfo(**{k: getattr(env, k, None) for k in ENV_ATTRS})
                conn.send(("ok", info, obs))
            elif msg[0] == "run":
                _, actions, images_last = msg
                states, success, obs = [], False, None
                for i, action in enumerate(actions):
                    result = env.step(action, images=images_last and i == len(actions) - 1)
                    obs = result.obs
                    states.append(np.asarray(obs["state"]))
                    if result.success:
                        success = True
                        break
                conn.send(("ok", states, success, obs))
            else:
                raise ValueError(f"unknown message {msg[0]!r}")
        except Exception:  # noqa: BLE001 - reported to the main process, which logs it in the episode
            if env is not None:
                try:
                    env.close()
                except Exception:  # noqa: BLE001
                    pass
            env, task = None, None
            conn.send(("error", traceback.format_exc()))
    conn.close()
    os._exit(0)  # no env.close() or interpreter teardown: EGL finalizers stall a spawned process's exit


@dataclass
class _Active:
    """One running episode in a slot."""

    rec: EpisodeRecord
    session: Any
    t0: float
    progress: EpisodeProgress | None = None
    obs: dict | None = None
    pending: list[np.ndarray] = field(default_factory=list)  # actions sent, not yet confirmed
    waiting_reply: bool = True  # a message to the simulator is unanswered


class _Slot:
    def __init__(self, ctx, spec: EnvSpec, seed: int, threads: int):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=simulator, args=(child, spec, seed, threads), daemon=True)
        self.proc.start()
        child.close()
        self.active: _Active | None = None

    def close(self) -> None:
        try:
            self.conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass

    def join(self) -> None:
        self.proc.join(timeout=30)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def run_parallel(spec: EnvSpec, task_ids: list[int], episodes: list[int], policy, settings: EpisodeSettings,
                 writer=None, done: set[tuple[str, int, int]] = frozenset(), envs: int = 2,
                 batch: int | None = None, sim_threads: int = 1,
                 profile: dict[str, float] | None = None) -> list[EpisodeRecord]:
    """Every (task, episode) not in ``done``, on ``envs`` simulator processes; records in finishing order.

    Args:
        batch: most queries per forward; ``None`` = ``envs``; 1 = one :meth:`Policy.infer` per query
            (bit-identical to the serial runner).
        profile: if given, filled with where the main process's time went: ``startup_s`` (processes
            and first resets, until the first query), ``policy_s`` (answering queries), ``sim_wait_s``
            (waiting for simulators after that), ``forwards`` and ``queries``.
    """
    prof = profile if profile is not None else {}
    for key in ("startup_s", "policy_s", "sim_wait_s", "forwards", "queries"):
        prof[key] = 0.0
    t_start, started = time.perf_counter(), False
    if not isinstance(envs, int) or envs < 1:
        raise ValueError(f"envs must be a positive int, got {envs!r}")
    batch = envs if batch is None else batch
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if settings.video_dir or settings.overlay_video_dir:
        raise ValueError("videos are recorded by the serial runner only: use envs=1 with --video-dir/--overlay-video-dir")
    work = deque((t, e) for t in task_ids for e in episodes if (spec.suite, t, e) not in done)
    if not work:
        return []
    ctx = mp.get_context("spawn")
    slots = [_Slot(ctx, spec, settings.seed, sim_threads) for _ in range(min(envs, len(work)))]
    records: list[EpisodeRecord] = []
    on_query = writer.write if writer is not None else None
    try:
        while True:
            for slot in slots:  # idle slots take the next episodes, in order
                if slot.active is None and work:
                    _start(slot, spec, *work.popleft(), policy, settings)
            busy = [s for s in slots if s.active is not None]
            if not busy:
                break
            waiting = []
            t0 = time.perf_counter()
            for slot in busy:  # lock-step: every busy slot answers before the policy runs
                if _receive(slot, policy, settings):
                    waiting.append(slot)
                else:
                    rec = _finish(slot)
                    records.append(rec)
                    if writer is not None:
                        writer.write(rec)
                    if settings.verbose:
                        _print_episode(rec, records)
            t1 = time.perf_counter()
            if started:
                prof["sim_wait_s"] += t1 - t0
            else:
                prof["startup_s"], started = t1 - t_start, True
            for i in range(0, len(waiting), batch):
                _answer(waiting[i:i + batch], policy, settings, on_query)
                prof["forwards"] += 1
            prof["queries"] += len(waiting)
            prof["policy_s"] += time.perf_counter() - t1
    finally:
        for slot in slots:
            slot.close()
        for slot in slots:
            slot.join()
    return records


def _start(slot: _Slot, spec: EnvSpec, task_id: int, episode: int, policy, settings: EpisodeSettings) -> None:
    rec = EpisodeRecord(settings.config_hash, spec.suite, task_id, spec.task_name(task_id), episode, settings.seed, success=False, steps=0,
                        queries=0, pruned_queries=0, flops_total=0.0, wall_s=0.0, flops_full_total=0.0)
    session = policy.new_session()
    session.reset()
    slot.active = _Active(rec, session, time.perf_counter())
    slot.conn.send(("reset", task_id, episode))


def _receive(slot: _Slot, policy, settings: EpisodeSettings) -> bool:
    """Take the slot's reply; True when its episode now waits for a query."""
    a = slot.active
    if not a.waiting_reply:  # the query failed: nothing was sent, the episode ends
        return False
    reply = slot.conn.recv()
    a.waiting_reply = False
    if reply[0] == "error":
        a.rec.error = reply[1]
        if settings.verbose:
            print(f"[{a.rec.suite} task {a.rec.task_id} episode {a.rec.episode}] episode error:\n{a.rec.error}",
                  flush=True)
        return False
    if a.progress is None:  # reply to "reset"
        info, obs = reply[1], reply[2]
        a.rec.suite, a.rec.task = info.suite, info.task
        # a missing control rate (real-time mode) is a setup error: raised, not logged per episode
        a.progress = EpisodeProgress(info, policy.platform, settings, a.rec, a.rec.episode)
        a.obs = obs
        return a.progress.remaining > 0
    states, success, obs = reply[1], reply[2], reply[3]
    for action, state in zip(a.pending, states):
        a.progress.executed(action)
        policy.record_step(state, a.session)
    a.pending = []
    if success:
        a.rec.success = True
        return False
    a.obs = obs
    return a.progress.remaining > 0


def _answer(group: list[_Slot], policy, settings: EpisodeSettings, on_query) -> None:
    """One batched query for the group's episodes, then each slot gets the actions to run."""
    t0 = time.perf_counter()
    try:
        if len(group) == 1:
            outs = [_one(policy, group[0])]
        else:
            outs = policy.infer_batch([s.active.obs for s in group], [s.active.session for s in group])
    except Exception:  # noqa: BLE001 - the forward itself failed: every episode in it gets the error
        err = traceback.format_exc()
        outs = [RuntimeError(err)] * len(group)
    wall = time.perf_counter() - t0
    for slot, out in zip(group, outs):
        a = slot.active
        try:
            if isinstance(out, Exception):
                raise out
            segment = a.progress.answer(out, a.obs, wall, policy, on_query)
        except Exception:  # noqa: BLE001 - logged in the episode, as the serial runner does
            a.rec.error = traceback.format_exc()
            if settings.verbose:
                print(f"[{a.rec.suite} task {a.rec.task_id} episode {a.rec.episode}] episode error:\n{a.rec.error}",
                      flush=True)
            continue
        # the images of the segment's last step are read by the next query (as in the serial runner)
        images_last = len(segment) <= a.progress.remaining
        a.pending = segment[:a.progress.remaining]
        a.waiting_reply = True
        slot.conn.send(("run", a.pending, images_last))


def _one(policy, slot: _Slot):
    try:
        out = policy.infer(slot.active.obs, slot.active.session)
    except Exception as e:  # noqa: BLE001
        return e
    out["info"]["batch"] = 1
    return out


def _finish(slot: _Slot) -> EpisodeRecord:
    a = slot.active
    slot.active = None
    a.rec.wall_s = time.perf_counter() - a.t0
    return a.rec
