"""Overlay videos of the policy server's episodes (``vla-adp serve --record-dir DIR``).

One mp4 per session episode, ``DIR/session-<id>/episode-NNNN.mp4`` (NNNN the next free number, so a
restarted server never overwrites an earlier video): one frame per query, since the server sees only
the observations it is sent. A frame shows every camera of the request with the query's pruned
patches masked and a caption with its gate state, displacement and kept tokens
(:class:`~vla_adp.viz.video.EpisodeRecorder`, ``video_fps`` 10 as paper Table 14).

An episode's video is finished when that session's episode ends: ``POST /reset`` of the session, its
expiry (noticed at the next request, as the store expires sessions lazily), or the server's shutdown.
Recording never fails a request: an error stops that episode's video, with a log line, and the
client gets its actions as usual.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from vla_adp.viz.overlay import OverlayConfig, pipeline_for
from vla_adp.viz.video import EpisodeRecorder

log = logging.getLogger("vla_adp.serve")
EPISODE_FILE = re.compile(r"episode-(\d+)(?:\.partial)?\.mp4")


def next_episode_path(folder: Path) -> Path:
    """``episode-NNNN.mp4`` with NNNN one past the highest number already in ``folder``."""
    numbers = [int(m.group(1)) for p in folder.glob("episode-*.mp4") if (m := EPISODE_FILE.fullmatch(p.name))]
    return folder / f"episode-{max(numbers, default=-1) + 1:04d}.mp4"


class SessionRecorder:
    """The open episode video of every session that has queried since its last episode start.

    Args:
        root: folder of the videos (one subfolder per session id).
        policy: the served :class:`~vla_adp.policy.Policy` (input size, patch size, center crop).
        config: overlay colours and fps.
    """

    def __init__(self, root: str | Path, policy, config: OverlayConfig = OverlayConfig()):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.n_images = policy.model.args.n_images
        self.pipeline = pipeline_for(policy.model.args, policy.center_crop)  # raw size: each frame's own
        self.config = config
        self.open: dict[str, EpisodeRecorder] = {}
        self.stopped: set[str] = set()  # sessions whose video failed in this episode: none until it ends
        self.finished: list[Path] = []

    def add(self, sid: str, obs: dict[str, Any], info: dict[str, Any]) -> None:
        """One frame of session ``sid``: the request's cameras under this query's keep mask."""
        from vla_adp.policy import camera_keys

        if sid in self.stopped:
            return
        try:
            rec = self.open.get(sid)
            if rec is None:
                # "session-" prefix: ids may be "." or "..", which must not name a folder as they are
                path = next_episode_path(self.root / f"session-{sid}")
                rec = self.open[sid] = EpisodeRecorder(path, [self.pipeline] * self.n_images, self.config)
            rec.add({k: np.asarray(obs[k]) for k in camera_keys(obs)[: self.n_images]}, info)
        except Exception:  # noqa: BLE001 - a video must never cost the robot its actions
            log.exception("session %r: recording stopped for this episode", sid)
            self.stopped.add(sid)
            self._close(sid)

    def end(self, sid: str) -> Path | None:
        """Finish session ``sid``'s episode video, if it has one; returns its path."""
        self.stopped.discard(sid)
        path = self._close(sid)
        if path is not None:
            self.finished.append(path)
            log.info("session %r: episode video %s", sid, path)
        return path

    def close_all(self) -> None:
        for sid in list(self.open):
            self.end(sid)

    def _close(self, sid: str) -> Path | None:
        rec = self.open.pop(sid, None)
        if rec is None:
            return None
        try:
            return rec.close()
        except Exception:  # noqa: BLE001 - as in add()
            log.exception("session %r: could not finish %s", sid, rec.path)
            return None
