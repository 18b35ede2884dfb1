"""Example: one Meta-World episode of the reference policy with ADP, with its frames kept for pictures.

Runs one held-out episode through the shared evaluation runner (``vla_adp.eval.runner.run_episode``,
the same computation as ``vla-adp eval metaworld``: same config hash, seeds and log records, with the
kept-token indices logged) and keeps every camera frame the policy saw, then writes

* ``run.jsonl``: the run line, one query line per policy query, the episode line;
* ``frames.npz``: one ``(T, H, W, 3)`` array per camera and ``steps``, so ``vla-adp viz overlay|video
  --frames`` can redraw any query (saved ``--upscale`` times larger, nearest neighbour, so that the
  112 px views make a readable picture; the overlay maps the patch grid onto any frame size).

    MUJOCO_GL=egl PYTHONPATH=src python examples/viz_metaworld.py --task drawer-open --out /tmp/viz_mw
    vla-adp viz overlay --log /tmp/viz_mw/run.jsonl --frames /tmp/viz_mw/frames.npz --query 5 \
        --image-size 112 --no-center-crop --out docs/img/overlay_metaworld.png
    vla-adp viz timeline --log /tmp/viz_mw/run.jsonl --out docs/img/gate_timeline_metaworld.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vla_adp.commands.common import EMBEDDED_POLICY
from vla_adp.eval.job import EvalJob, build_pruner, load_policy, run_config, run_record
from vla_adp.eval.logs import LogWriter, config_hash
from vla_adp.eval.runner import EpisodeSettings, run_episode


class FrameKeeper:
    """An Env that passes everything through and keeps the camera frames of every observation."""

    CAMERAS = ("full_image", "wrist_image")

    def __init__(self, env, upscale: int = 1):
        self.env, self.upscale = env, upscale
        self.frames: dict[str, list[np.ndarray]] = {k: [] for k in self.CAMERAS}

    def __getattr__(self, name):
        return getattr(self.env, name)

    def _keep(self, obs: dict) -> None:
        for k in self.CAMERAS:  # nearest-neighbour upscaling: the same pixels, drawn larger
            img = np.asarray(obs[k])
            self.frames[k].append(img.repeat(self.upscale, 0).repeat(self.upscale, 1))

    def reset(self, episode: int) -> dict:
        obs = self.env.reset(episode)
        self.frames = {k: [] for k in self.CAMERAS}
        self._keep(obs)
        return obs

    def step(self, action):
        result = self.env.step(action)
        self._keep(result.obs)
        return result

    def save(self, path: Path) -> Path:
        """Frame t = the observation before env step t (the last one: after the final step)."""
        n = len(self.frames[self.CAMERAS[0]])
        np.savez_compressed(path, **{k: np.stack(v) for k, v in self.frames.items()}, steps=np.arange(n))
        return path


def run(args) -> None:
    from vla_adp.envs.metaworld import make_env, suite_tasks

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task_id = suite_tasks("metaworld").index(args.task)
    job = EvalJob(env="metaworld", suite="metaworld", checkpoint=args.checkpoint, log=str(out / "run.jsonl"),
                  tasks=(task_id,), episodes=(args.episode, args.episode + 1), pruner="adp", keep=args.keep,
                  pruner_fields={"positions": "original"}, log_indices=True)  # as the demo (4-layer policy)
    pruner = build_pruner(job)
    config = run_config(job, pruner)
    policy = load_policy(job, pruner)
    env = FrameKeeper(make_env("metaworld", task_id, image_size=policy.model.args.image_size), args.upscale)
    Path(job.log).unlink(missing_ok=True)
    settings = EpisodeSettings(config_hash(config), job.seed, log_indices=True)
    with LogWriter(job.log) as writer:
        writer.write(run_record(job, config))
        rec = run_episode(env, policy, args.episode, settings, writer.write)
        writer.write(rec)
    env.close()
    frames = env.save(out / "frames.npz")
    print(f"{args.task} episode {args.episode}: success {rec.success}, {rec.queries} queries "
          f"({rec.pruned_queries} pruned) -> {job.log}, {frames}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(EMBEDDED_POLICY))
    p.add_argument("--task", default="drawer-open", help="a task of the metaworld suite")
    p.add_argument("--episode", type=int, default=0, help="held-out episode (environment seed 1_000_000 + episode)")
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--upscale", type=int, default=3, help="save the frames this many times larger (pictures only)")
    p.add_argument("--out", required=True)
    run(p.parse_args())


if __name__ == "__main__":
    main()
