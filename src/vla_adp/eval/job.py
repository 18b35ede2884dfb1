"""One evaluation job: a checkpoint, a pruner, a suite, some tasks and a range of episodes, logged.

``vla-adp eval`` runs one job in-process; ``vla-adp sweep`` sends one job per (config, task,
episode chunk) to Ray. Both go through :func:`run_job`, so a sweep episode and a command-line
episode are the same computation and share the same config hash.

The run's identity (:func:`run_config`) is made of the job's *inputs* and the checkpoint's
description files, plus the pruner's resolved config; it is computed without loading the model, so
the sweep driver can find finished chunks before it starts any worker.

Environments come from :data:`ENV_FACTORIES`: a module that defines ``make_env(suite, task_id,
max_steps=None, render="faithful", image_size=224) -> Env`` (``max_steps=None``: the suite's
protocol limit; ``image_size``: the policy's input side), ``suite_tasks(suite) -> list[str]`` and
``suite_instructions(suite) -> list[str]`` (for the ``instruction_shift`` control). A model family may
run an env through its own adapter (:attr:`vla_adp.families.ModelFamily.envs`: π0 / π0.5 on LIBERO use
:mod:`vla_adp.envs.libero_pi0`); an adapter with several protocols also defines ``PROTOCOLS`` (name →
protocol), ``DEFAULT_PROTOCOL``, ``policy_options(protocol) -> dict`` (what the protocol asks of the
policy's ``load``) and takes ``protocol=`` in ``make_env``; ``POLICY_RESIZES = True``: the policy
resizes the images itself, so ``make_env`` gets no ``image_size``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_adp.eval.logs import LogLock, LogWriter, checkpoint_identity, config_hash, finished_episodes, jsonable
from vla_adp.eval.runner import EpisodeSettings, run_suite
from vla_adp.eval.schema import EpisodeRecord, RunRecord
from vla_adp.families import DEFAULT_FAMILY, PI0_FAMILIES, get_family
from vla_adp.utils.machine import DTYPES, machine, versions

# env name -> module implementing the factory interface above
ENV_FACTORIES: dict[str, str] = {
    "libero": "vla_adp.envs.libero",
    "metaworld": "vla_adp.envs.metaworld",
}


def env_module_name(name: str, family: str = DEFAULT_FAMILY) -> str:
    """The module of env ``name`` for ``family`` (its own adapter, else :data:`ENV_FACTORIES`')."""
    if name not in ENV_FACTORIES:
        raise ValueError(f"unknown environment {name!r}; expected one of {sorted(ENV_FACTORIES)}")
    return get_family(family).env_adapter(name, ENV_FACTORIES[name])


def env_module(name: str, family: str = DEFAULT_FAMILY):
    return importlib.import_module(env_module_name(name, family))


def env_protocol(job: "EvalJob") -> str | None:
    """The protocol the job's env adapter runs (``job.protocol``, else the adapter's default); ``None``
    for adapters with one protocol, which refuse ``job.protocol``."""
    mod = env_module(job.env, job.family)
    protocols = getattr(mod, "PROTOCOLS", None)
    if protocols is None:
        if job.protocol is not None:
            raise ValueError(f"--protocol {job.protocol!r} does not apply to --family {job.family} on {job.env}: "
                             "it has one protocol (OpenVLA-OFT's)")
        return None
    name = mod.DEFAULT_PROTOCOL if job.protocol is None else job.protocol
    if name not in protocols:
        raise ValueError(f"unknown {job.env} protocol {name!r} for --family {job.family}; expected one of "
                         f"{sorted(protocols)}")
    return name


@dataclass(frozen=True)
class EvalJob:
    """Everything one evaluation needs; picklable, so Ray can ship it.

    Args:
        env: key of :data:`ENV_FACTORIES`.
        suite: suite name (``libero_spatial``, ...).
        checkpoint: checkpoint folder.
        family: the model family of ``checkpoint`` (a key of :data:`vla_adp.families.FAMILIES`); it
            loads the policy and builds the pruner. Part of the run's identity unless ``oft``.
        log: JSONL log file (appended; finished episodes of the same config are skipped).
        tasks: task ids; ``None`` = every task of the suite.
        episodes: ``(start, stop)``: episode i starts from initial state i.
        pruner, keep, pruning_config, pruner_fields: what ``build_pruner`` gets; no pruner when
            ``pruner`` and ``pruning_config`` are both ``None``.
        seed, max_steps, render, open_loop: see :class:`EpisodeSettings` and the env module.
        policy: keyword arguments of the family's config (OpenVLA-OFT's and OpenVLA's:
            :class:`~vla_adp.policy.PolicyConfig`; π0's takes none: :func:`vla_adp.pi0_policy.pi0_config`).
        platform, device, dtype: how the checkpoint is loaded (``dtype`` a key of
            ``vla_adp.utils.machine.DTYPES``).
        log_indices, video_dir, overlay_video_dir, verbose: see :class:`EpisodeSettings`; they do
            not change the results, so they are not part of the run's identity.
        resume_logs: other logs of the same run (the other workers' logs): episodes finished there
            are skipped too; read only, never locked.
        realtime: keyword arguments of :class:`~vla_adp.eval.realtime.RealtimeConfig`; ``None`` =
            the world pauses while the policy thinks. Part of the run's identity when given.
        envs: simulator processes (:mod:`vla_adp.eval.parallel`); 1 = the serial runner.
        batch: most queries per forward with ``envs > 1`` (``None`` = ``envs``; 1 = bit-identical
            to the serial runner). Neither changes what is computed, only how (not in the identity).
        protocol: the protocol of the family's env adapter (π0 / π0.5 on LIBERO: ``lerobot``, the
            default, or ``openpi``; :mod:`vla_adp.envs.libero_pi0`); ``None``: the adapter's default.
            Adapters with one protocol refuse it. The resolved protocol is part of the run's identity
            where the adapter has several (OFT's runs keep their hashes).
        instruction_shift: a control for "does the policy read its instruction?": task ``t`` runs
            with the instruction of task ``(t + shift) mod n`` of the same suite, in ``t``'s scenes
            and judged by ``t``'s goal. 0 = the task's own instruction. Part of the run's
            identity when non-zero; serial runner only.
    """

    env: str
    suite: str
    checkpoint: str
    log: str
    tasks: tuple[int, ...] | None = None
    episodes: tuple[int, int] = (0, 50)
    pruner: str | None = None
    keep: float | None = None
    pruning_config: str | None = None
    pruner_fields: dict[str, Any] = field(default_factory=dict)
    seed: int = 7
    max_steps: int | None = None
    render: str = "faithful"
    open_loop: int | None = None
    policy: dict[str, Any] = field(default_factory=dict)
    platform: str | None = None
    device: str = "cpu"
    dtype: str = "fp32"
    log_indices: bool = False
    video_dir: str | None = None
    verbose: bool = True
    overlay_video_dir: str | None = None
    resume_logs: tuple[str, ...] = ()
    realtime: dict[str, Any] | None = None
    envs: int = 1
    batch: int | None = None
    instruction_shift: int = 0
    family: str = DEFAULT_FAMILY
    protocol: str | None = None

    def __post_init__(self) -> None:
        get_family(self.family).check_options(platform=self.platform)  # an unknown family lists the known ones
        env_protocol(self)  # an unknown env, an env the family does not run, a bad protocol
        if not isinstance(self.policy, dict):
            raise ValueError(f"policy must be a dict of the family's config fields, got {self.policy!r}")
        get_family(self.family).make_config(**self.policy)  # settings the family refuses fail before any log
        if not isinstance(self.instruction_shift, int) or isinstance(self.instruction_shift, bool):
            raise ValueError(f"instruction_shift must be an int, got {self.instruction_shift!r}")
        if self.instruction_shift and self.envs > 1:
            raise ValueError("instruction_shift runs on the serial runner only: drop --envs")
        if not isinstance(self.envs, int) or self.envs < 1:
            raise ValueError(f"envs must be a positive int, got {self.envs!r}")
        if self.batch is not None and (not isinstance(self.batch, int) or self.batch < 1):
            raise ValueError(f"batch must be a positive int or None, got {self.batch!r}")
        if self.overlay_video_dir and self.family in PI0_FAMILIES:
            raise ValueError(f"--overlay-video-dir draws OpenVLA-OFT's image pipeline (centre crop, resize); "
                             f"--family {self.family} has no overlay (--video-dir records the plain agentview)")
        if self.envs > 1 and (self.video_dir or self.overlay_video_dir):
            raise ValueError("videos are recorded by the serial runner only: drop --envs or the video options")
        _ = self.realtime_config  # builds (validates) the RealtimeConfig
        start, stop = self.episodes
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop):
            raise ValueError(f"episodes must be (start, stop) with 0 <= start < stop, got {self.episodes!r}")
        if not Path(self.checkpoint).is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {self.checkpoint}")

    @property
    def realtime_config(self):
        from vla_adp.eval.realtime import RealtimeConfig

        if self.realtime is None:
            return None
        if not isinstance(self.realtime, dict):
            raise ValueError(f"realtime must be a dict of RealtimeConfig fields or None, got {self.realtime!r}")
        return RealtimeConfig(**self.realtime)

    @property
    def has_pruner(self) -> bool:
        return self.pruner is not None or self.pruning_config is not None


def checkpoint_hints(checkpoint: str | Path) -> dict[str, Any]:
    """What the checkpoint's writer recorded about its pixels (``config.json`` → ``vla_adp``):
    ``render`` and ``camera_size`` of the demonstrations it was trained on; ``{}`` for the
    published checkpoints (faithful rendering, 256-px cameras)."""
    try:
        cfg = json.loads((Path(checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return {}  # the loader reports a broken config.json with its own message
    ours = cfg.get("vla_adp") if isinstance(cfg, dict) else None
    return {k: ours[k] for k in ("render", "camera_size") if isinstance(ours, dict) and k in ours}


def build_pruner(job: EvalJob):
    """The job's pruner, built by its family (which may map a method to its own variant), or None."""
    if not job.has_pruner:
        return None
    return get_family(job.family).build_pruner(job.pruner, keep_ratio=job.keep, config_file=job.pruning_config,
                                               **job.pruner_fields)


def pruner_identity(job: EvalJob, pruner) -> dict[str, Any] | None:
    """The resolved config where the pruner has one, else the inputs it was built from."""
    if pruner is None:
        return None
    cfg = getattr(pruner, "config", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        return {"name": pruner.name, "config": jsonable(cfg)}
    from vla_adp.pruning.registry import read_config_file

    file = read_config_file(job.pruning_config) if job.pruning_config else None
    return {"name": pruner.name, "keep": job.keep, "fields": jsonable(job.pruner_fields), "file": file}


def run_config(job: EvalJob, pruner=None) -> dict[str, Any]:
    """What defines the run's results; ``method`` is what stays equal across suites."""
    protocol = env_protocol(job)
    config = {
        "env": job.env,
        "suite": job.suite,
        "checkpoint": checkpoint_identity(job.checkpoint),
        "max_steps": job.max_steps,  # None: the suite's protocol limit
        "unnorm_key": job.policy.get("unnorm_key"),
        "method": {
            "pruner": pruner_identity(job, pruner if pruner is not None else build_pruner(job)),
            "policy": {k: v for k, v in sorted(job.policy.items()) if k != "unnorm_key"},
            "platform": job.platform,
            "dtype": job.dtype,
            "seed": job.seed,
            "open_loop": job.open_loop,
            "render": job.render,
        },
    }
    if job.realtime is not None:  # only then: paused-world runs keep their hashes
        config["method"]["realtime"] = job.realtime_config.identity()
    if job.instruction_shift:  # likewise
        config["method"]["instruction_shift"] = job.instruction_shift
    if job.family != DEFAULT_FAMILY:  # likewise: OFT runs keep the hashes they had before families
        config["method"]["family"] = job.family
    if protocol is not None:  # likewise: only adapters with several protocols record theirs
        config["method"]["protocol"] = protocol
    return config


def run_record(job: EvalJob, config: dict[str, Any]) -> RunRecord:
    return RunRecord(config_hash(config), config_hash(config["method"]), config, versions(), machine(job.device),
                     dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), list(sys.argv))


def load_policy(job: EvalJob, pruner):
    """The job's policy; the env adapter's protocol adds its policy options (π0: replanning, state)."""
    family, protocol = get_family(job.family), env_protocol(job)
    options = env_module(job.env, job.family).policy_options(protocol) if protocol is not None else {}
    return family.load(job.checkpoint, family.make_config(**job.policy), pruner, platform=job.platform,
                       dtype=DTYPES[job.dtype], device=job.device, **options)


def task_ids(job: EvalJob) -> list[int]:
    n = len(env_module(job.env, job.family).suite_tasks(job.suite))
    ids = list(range(n)) if job.tasks is None else list(job.tasks)
    bad = [t for t in ids if not 0 <= t < n]
    if bad:
        raise ValueError(f"{job.suite} has tasks 0..{n - 1}, got {bad}")
    return ids


def run_job(job: EvalJob) -> list[EpisodeRecord]:
    """Run the job's missing episodes, appending to its log; returns the episodes run now.

    Holds the log's :class:`~vla_adp.eval.logs.LogLock` throughout: a second run on the same log
    raises :class:`~vla_adp.eval.logs.LogBusy` naming the first.
    """
    pruner = build_pruner(job)
    config = run_config(job, pruner)
    run = run_record(job, config)
    tasks, episodes = task_ids(job), range(*job.episodes)
    with LogLock(job.log):
        return _run_locked(job, pruner, run, tasks, episodes)


def _run_locked(job: EvalJob, pruner, run: RunRecord, tasks: list[int], episodes: range) -> list[EpisodeRecord]:
    done = finished_episodes([*job.resume_logs, job.log], run.config_hash)
    if all((job.suite, t, e) in done for t in tasks for e in episodes):
        return []
    policy = load_policy(job, pruner)
    settings = EpisodeSettings(run.config_hash, job.seed, job.open_loop, job.log_indices, job.video_dir, job.verbose,
                               job.overlay_video_dir, job.realtime_config)
    module, protocol = env_module_name(job.env, job.family), env_protocol(job)
    mod = importlib.import_module(module)
    size = None if getattr(mod, "POLICY_RESIZES", False) else policy.model.args.image_size
    extra: dict[str, Any] = {} if protocol is None else {"protocol": protocol}
    camera = checkpoint_hints(job.checkpoint).get("camera_size")
    if camera and module == ENV_FACTORIES["libero"]:  # a policy trained on other cameras than the 256-px protocol's
        extra["camera_size"] = int(camera)

    instructions = mod.suite_instructions(job.suite) if job.instruction_shift else None

    def make(task_id: int):
        env = mod.make_env(job.suite, task_id, max_steps=job.max_steps, render=job.render, image_size=size, **extra)
        if instructions:  # the control run: another task's instruction in this task's scenes
            env.instruction = instructions[(task_id + job.instruction_shift) % len(instructions)]
        return env

    if job.envs > 1:
        from vla_adp.eval.parallel import EnvSpec, run_parallel

        spec = EnvSpec(module, job.suite, job.max_steps, job.render, size, extra)
        with LogWriter(job.log) as writer:
            writer.write(run)
            return run_parallel(spec, tasks, list(episodes), policy, settings, writer, done, job.envs, job.batch)

    with LogWriter(job.log) as writer:
        writer.write(run)
        return run_suite(make, tasks, episodes, policy, settings, writer, done, suite=job.suite)
