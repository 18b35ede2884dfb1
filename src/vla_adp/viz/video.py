"""Episode videos: every camera with its pruned patches masked, plus the gate's state per frame.

The reference ADP code has a ``video_fps`` field (10, paper Table 14) and saves no video; OpenVLA-OFT
saves the bare agentview frames at 30 fps. Here each frame shows all cameras side by side with
:func:`~vla_adp.viz.overlay.draw_overlay`, and a caption with the query, env step, gate state,
displacement and kept tokens of the action chunk being executed.

The evaluation runner (``--overlay-video-dir``, :mod:`vla_adp.eval.video`) and the policy server
(``--record-dir``, :mod:`vla_adp.serve.recording`) record through :class:`EpisodeRecorder`; any
other loop hooks in the same way (one recorder per episode; frames are the frames the robot saw)::

    rec = EpisodeRecorder(path, [pipeline_for(policy.model.args, policy.center_crop)] * n_cameras)
    for t in steps:
        if need_query:
            out = policy.infer(obs); info = out["info"]   # kept_indices, gate_state, displacement…
            rec.add(frames, info, step=t)                 # new chunk: new mask and caption
        else:
            rec.add(frames, step=t)                       # same chunk: the last info stays on screen
        ...
    rec.close()  # -> path of the mp4 (also safe to call twice; use ``with`` to close on errors)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vla_adp.viz.overlay import ImagePipeline, OverlayConfig, draw_cameras, side_by_side

CAPTION_H = 34  # two lines of ~12 px text with margins
MACRO_BLOCK = 16  # H.264 encoders want sides divisible by 16; pad rather than let ffmpeg rescale


def caption(info: Mapping[str, Any] | None, step: int | None = None) -> list[str]:
    """Two caption lines from a policy ``info`` dict or a logged query record."""
    if not info:
        return [f"step {step}" if step is not None else "", "no query yet"]
    state = info.get("gate_state")
    if state is None:
        gate = "pruned" if info.get("pruned") else "full vision"
    else:
        gate = f"gate {int(state)} ({'prune' if int(state) else 'full vision'})"
    disp = info.get("displacement")
    disp_text = "disp —" if disp is None else f"disp {float(disp):.4f}"
    where = f"query {info.get('query', '?')}" + (f"  step {step}" if step is not None else "")
    kept = f"kept {info.get('kept_visual', '?')}/{info.get('n_visual', '?')}"
    views = info.get("kept_per_view")
    if views:
        kept += f"  per view {list(views)}"
    return [f"{where}  {gate}  {disp_text}", kept]


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: bitmap font without sizes
        return ImageFont.load_default()


def with_caption(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """The image above a black caption band, padded to multiples of 16 px."""
    h, w = image.shape[:2]
    out_h = -(-(h + CAPTION_H) // MACRO_BLOCK) * MACRO_BLOCK
    out_w = -(-w // MACRO_BLOCK) * MACRO_BLOCK
    canvas = Image.new("RGB", (out_w, out_h))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for i, line in enumerate(lines):
        draw.text((4, h + 3 + 15 * i), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def compose_frame(frames: Sequence[np.ndarray], info: Mapping[str, Any] | None, pipelines: Sequence[ImagePipeline],
                  config: OverlayConfig = OverlayConfig(), step: int | None = None) -> np.ndarray:
    """One video frame: overlaid cameras side by side with the caption below."""
    kept = None if not info else info.get("kept_indices")
    drawn = draw_cameras(frames, kept, pipelines, config)
    return with_caption(side_by_side(drawn), caption(info, step))


def _frames_list(frames: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    return list(frames.values()) if isinstance(frames, Mapping) else list(frames)


class Mp4Writer:
    """Streams uint8 (H, W, 3) frames into an H.264 mp4 (imageio-ffmpeg) without holding them.

    Frames go to ``NAME.partial.mp4`` first; :meth:`close` finishes that file and renames it to
    ``path`` (or the final name it is given), so a file under its final name is always complete and
    a run killed half-way leaves a ``.partial.mp4`` that a rerun overwrites.

    Args:
        path: output ``.mp4``.
        fps: frames per second.
        quality: imageio-ffmpeg quality 0..10 (8: masks stay crisp at ~10 kB per 464×272 frame).
    """

    def __init__(self, path: str | Path, fps: int, quality: int = 8):
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"videos are .mp4 files, got {self.path.name!r}")
        self.partial = self.path.with_name(self.path.stem + ".partial.mp4")
        self.fps, self.quality = fps, quality
        self.n_frames = 0
        self._writer = None
        self._shape: tuple[int, ...] | None = None

    def append(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if self._writer is None:
            import imageio.v2 as imageio

            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self._writer = imageio.get_writer(self.partial, fps=self.fps, codec="libx264", quality=self.quality,
                                              macro_block_size=MACRO_BLOCK, pixelformat="yuv420p")
            self._shape = frame.shape
        elif frame.shape != self._shape:
            raise ValueError(f"frame {self.n_frames} is {frame.shape}, earlier frames were {self._shape}")
        self._writer.append_data(frame)
        self.n_frames += 1

    def close(self, final: str | Path | None = None) -> Path | None:
        """Finish the file under ``final`` (default ``path``); ``None`` when no frame was written."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            self.path = Path(final) if final is not None else self.path
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.partial.replace(self.path)
        return self.path if self.n_frames else None


class EpisodeRecorder:
    """Streams one episode into an mp4 (:class:`Mp4Writer`), one overlay frame per :meth:`add`.

    Args:
        path: output ``.mp4`` (written as ``.partial.mp4`` until :meth:`close`).
        pipelines: one :class:`ImagePipeline` per camera, in the frames' order; ``None`` = the
            default OFT pipeline (224 px, patch 14, 90 % crop) with each frame's own size as raw size.
        config: colours, alpha and fps (:class:`OverlayConfig`, reference names via ``from_dict``).
        frames_path: also save the raw frames (one ``(T, H, W, 3)`` array per camera, and ``steps``)
            to this ``.npz`` on close, so ``vla-adp viz video|overlay --frames`` can redraw them
            from the log later (costs memory: the whole episode is kept until then).
    """

    def __init__(self, path: str | Path, pipelines: Sequence[ImagePipeline] | None = None,
                 config: OverlayConfig = OverlayConfig(), frames_path: str | Path | None = None):
        self.video = Mp4Writer(path, config.fps)
        self.pipelines = None if pipelines is None else list(pipelines)
        self.config = config
        self.info: Mapping[str, Any] | None = None
        self.frames_path = None if frames_path is None else Path(frames_path)
        self._kept: dict[str, list[np.ndarray]] = {}
        self._steps: list[int] = []

    @property
    def path(self) -> Path:
        return self.video.path

    @property
    def n_frames(self) -> int:
        return self.video.n_frames

    def add(self, frames: Mapping[str, np.ndarray] | Sequence[np.ndarray], info: Mapping[str, Any] | None = None,
            step: int | None = None) -> None:
        """Append one frame; ``info`` (from ``Policy.infer`` or a query record) replaces the shown query."""
        if info is not None:
            self.info = info
        images = _frames_list(frames)
        pipelines = self.pipelines or [ImagePipeline()] * len(images)
        self.video.append(compose_frame(images, self.info, pipelines, self.config, step))
        if self.frames_path is not None:
            names = list(frames) if isinstance(frames, Mapping) else [f"camera{i}" for i in range(len(images))]
            for name, img in zip(names, images):
                self._kept.setdefault(name, []).append(np.array(img, np.uint8))
            self._steps.append(self.n_frames - 1 if step is None else int(step))

    def close(self, final: str | Path | None = None) -> Path | None:
        """Finish the video (under ``final``, default ``path``) and the frames ``.npz``; returns the
        video's path (``None`` without frames). Safe to call twice; ``with`` closes on errors."""
        path = self.video.close(final)
        if self.frames_path is not None and self._steps:
            self.frames_path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(self.frames_path, steps=np.asarray(self._steps),
                                **{k: np.stack(v) for k, v in self._kept.items()})
            self._kept, self._steps = {}, []
        return path

    def __enter__(self) -> "EpisodeRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def info_per_frame(steps: Sequence[int], queries: Sequence[Any]) -> list[Any]:
    """For each frame's env step, the last query at or before it (``None`` before the first)."""
    ordered = sorted(queries, key=lambda q: q.step)
    q_steps = np.asarray([q.step for q in ordered])
    out = []
    for s in steps:
        i = int(np.searchsorted(q_steps, s, side="right")) - 1
        out.append(ordered[i] if i >= 0 else None)
    return out


def write_episode_video(path: str | Path, frames: Mapping[str, np.ndarray], queries: Sequence[Any],
                        pipelines: Sequence[ImagePipeline] | None = None, steps: Sequence[int] | None = None,
                        config: OverlayConfig = OverlayConfig()) -> Path:
    """An episode video from saved frames ``{camera: (T, H, W, 3)}`` and its logged query records.

    Args:
        steps: env step of every frame (default 0..T−1), matched against the records' ``step``.
    """
    arrays = [np.asarray(v) for v in frames.values()]
    n = {a.shape[0] for a in arrays}
    if len(n) != 1 or any(a.ndim != 4 for a in arrays):
        raise ValueError(f"frames must be (T, H, W, 3) per camera with one T, got {[a.shape for a in arrays]}")
    t = n.pop()
    steps = list(range(t)) if steps is None else [int(s) for s in steps]
    if len(steps) != t:
        raise ValueError(f"{len(steps)} steps for {t} frames")
    infos = info_per_frame(steps, queries)
    with EpisodeRecorder(path, pipelines, config) as rec:
        for i in range(t):
            info = infos[i].to_dict() if hasattr(infos[i], "to_dict") else infos[i]
            rec.add([a[i] for a in arrays], info, step=steps[i])
    return Path(path)
