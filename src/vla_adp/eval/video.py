"""Episode videos as the reference saves them: the upright 256² agentview, 30 fps MP4 (spec §5.3).

The reference names files ``{DATE_TIME}--openvla_oft--episode={n}--success={s}--task={desc}.mp4``;
here the name carries what identifies the episode across resumed and distributed runs instead of
a running count and a start time.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

FPS = 30


def episode_video_name(rec) -> str:
    """``{suite}--task={id}--episode={n}--success={s}--{config hash}--{task, 50 chars}.mp4``."""
    desc = re.sub(r"[\s.]+", "_", rec.task.lower())[:50]
    return (f"{rec.suite}--task={rec.task_id}--episode={rec.episode}--success={rec.success}"
            f"--{rec.config_hash}--{desc}.mp4")


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: int = FPS) -> Path:
    """H.264 MP4 of uint8 (H, W, 3) frames through imageio-ffmpeg."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=16) as w:
        for frame in frames:
            w.append_data(np.asarray(frame, np.uint8))
    return path
