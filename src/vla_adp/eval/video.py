"""Episode videos of the evaluation runner: the reference's plain agentview and the pruning overlay.

* plain (``video_dir``, ``--video-dir``): what OpenVLA-OFT's ``save_rollout_video`` writes, the
  upright 256² agentview (``env.frame()``), one frame per env step at 30 fps (moojink/openvla-oft ``save_rollout_video``).
* overlay (``overlay_video_dir``, ``--overlay-video-dir``): every camera frame the policy
  saw at each env step, with the keep mask of the action chunk being executed and a caption with
  its gate state, displacement and kept count (:class:`vla_adp.viz.video.EpisodeRecorder`,
  ``video_fps`` 10 as paper Table 14). The mask comes from ``info["kept_indices"]`` of the query,
  which the policy always returns; ``log_indices`` only decides whether the log keeps them too.

Both stream to ``NAME.partial.mp4`` while the episode runs and are renamed when it ends, because the
name carries the outcome. Recording never costs an episode: a video that fails is reported, its
frames so far stay in the ``.partial.mp4``, and the episode goes on without it.

The reference names files ``{DATE_TIME}--openvla_oft--episode={n}--success={s}--task={desc}.mp4``;
here the name carries what identifies the episode across resumed and distributed runs instead of
a running count and a start time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

PLAIN_FPS = 30


def episode_video_name(rec) -> str:
    """``{suite}--task={id}--episode={n}--success={s}--{config hash}--{task, 50 chars}.mp4``."""
    desc = re.sub(r"[\s.]+", "_", rec.task.lower())[:50]
    return (f"{rec.suite}--task={rec.task_id}--episode={rec.episode}--success={rec.success}"
            f"--{rec.config_hash}--{desc}.mp4")


class EpisodeVideos:
    """The videos one episode was asked for, fed once per env step by the runner.

    Args:
        rec: the episode's record (its name fields; ``success`` is read again at :meth:`finish`).
        policy: the :class:`~vla_adp.policy.Policy` (model input size, patch size, center crop).
        video_dir: folder of the plain videos, or ``None``.
        overlay_video_dir: folder of the overlay videos, or ``None``.
    """

    def __init__(self, rec, policy, video_dir: str | None, overlay_video_dir: str | None):
        from vla_adp.viz.overlay import pipeline_for
        from vla_adp.viz.video import EpisodeRecorder, Mp4Writer

        name = episode_video_name(rec)
        self.plain = Mp4Writer(Path(video_dir) / name, PLAIN_FPS) if video_dir else None
        self.overlay = None
        if overlay_video_dir:  # OpenVLA-OFT's image pipeline (the plain video needs only env.frame())
            self.n_images = policy.model.args.n_images
            # The frames are the observation's images: raw size = their own, no rotation (already upright).
            pipe = pipeline_for(policy.model.args, policy.center_crop)
            self.overlay = EpisodeRecorder(Path(overlay_video_dir) / name, [pipe] * self.n_images)
        self.where = f"[{rec.suite} task {rec.task_id} episode {rec.episode}]"

    def add(self, step: int, env, obs: dict[str, Any], info: dict[str, Any] | None) -> None:
        """The frames of env step ``step``; ``info`` of the query made at this step, else ``None``."""
        if self.plain is not None:
            self._guard("plain", lambda: self.plain.append(env.frame()))
        if self.overlay is not None:
            self._guard("overlay", lambda: self.overlay.add(self._cameras(obs), info, step=step))

    def _cameras(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        from vla_adp.policy import camera_keys

        return {k: np.asarray(obs[k]) for k in camera_keys(obs)[: self.n_images]}

    def _guard(self, kind: str, fn) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a video must not cost the episode
            writer = getattr(self, kind)
            setattr(self, kind, None)
            kept = _close_quietly(writer)
            print(f"{self.where} {kind} video stopped: {type(e).__name__}: {e}"
                  + (f"; frames so far in {kept}" if kept else ""), flush=True)

    def finish(self, rec) -> None:
        """Give the videos their final names (with the outcome) and note them in ``rec``."""
        final = episode_video_name(rec)
        for kind, field in (("plain", "video"), ("overlay", "overlay_video")):
            writer = getattr(self, kind)
            if writer is None:
                continue
            try:
                path = writer.close(writer.path.with_name(final))
            except Exception as e:  # noqa: BLE001 - as in add()
                print(f"{self.where} could not finish the {kind} video: {type(e).__name__}: {e}", flush=True)
                continue
            setattr(rec, field, None if path is None else str(path))


def _close_quietly(writer) -> Path | None:
    """Finish what a failed writer has (under its ``.partial.mp4`` name); its path, if any frames."""
    video = getattr(writer, "video", writer)  # EpisodeRecorder wraps an Mp4Writer
    try:
        if video.close(video.partial) is not None:
            return video.partial
    except Exception:  # noqa: BLE001 - already reporting the first failure
        pass
    return None
