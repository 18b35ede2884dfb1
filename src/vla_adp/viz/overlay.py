"""Pruned-patch overlays: which camera pixels each visual token saw, and masks drawn on them.

Seed paper Fig. 4 draws pruned vision tokens as blue masks on the camera frames; the reference ADP
code exposes ``overlay_pruned_color`` [0, 0, 255] and ``overlay_pruned_alpha`` 120 (Table 14) but
never draws anything. Here the masks land on the frame the robot saw, through the policy's image
pipeline (docs/reference.md §5, :meth:`vla_adp.policy.Policy.images`):

    raw frame (H, W) ─[rotate 180°]─► ─[resize to S×S]─► pre-crop image (S²)
        ─[center crop of area a, TF crop_and_resize back to M×M]─► model image (M²)
        ─► G×G patches of P px (G = M / P); visual token j of a camera = patch (j // G, j % G)

Every stage is an affine map per axis, so a patch is an axis-aligned box in the raw frame.
Coordinates are pixel *edges* (pixel k spans [k, k+1), its centre is k + 0.5). TF samples output
centre i at input centre y1·(S−1) + i·(y2−y1)·(S−1)/(M−1); PIL's resize maps edges by the size
ratio; the 180° rotation maps edge y to H − y.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from vla_adp.model.transforms import CROP_AREA, center_crop_box

# Reference names (paper Table 14) -> ours.
REFERENCE_NAMES = {"overlay_pruned_color": "color", "overlay_pruned_alpha": "alpha", "video_fps": "fps"}


@dataclass(frozen=True)
class OverlayConfig:
    """How pruned patches are drawn (paper Table 14 defaults).

    Args:
        color: RGB tint of pruned patches ([0, 0, 255] = blue, as in Fig. 4).
        alpha: opacity of the tint, 0 (invisible) .. 255 (opaque).
        fps: frames per second of episode videos.
        outline: also draw the patch grid (1 px, darkened) to show the token boundaries.
        unseen_dim: darken pixels the center crop discarded by this share (0 = leave them as they
            are), so that they do not read as kept.
    """

    color: tuple[int, int, int] = (0, 0, 255)
    alpha: int = 120
    fps: int = 10
    outline: bool = False
    unseen_dim: float = 0.5

    def __post_init__(self) -> None:
        color = tuple(self.color) if isinstance(self.color, (list, tuple)) else self.color
        if not (isinstance(color, tuple) and len(color) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in color)):
            raise ValueError(f"OverlayConfig.color must be three ints in 0..255, got {self.color!r}")
        object.__setattr__(self, "color", tuple(int(c) for c in color))
        if not (_is_int(self.alpha) and 0 <= self.alpha <= 255):
            raise ValueError(f"OverlayConfig.alpha must be an int in 0..255, got {self.alpha!r}")
        if not (_is_int(self.fps) and self.fps >= 1):
            raise ValueError(f"OverlayConfig.fps must be an int >= 1, got {self.fps!r}")
        if not (isinstance(self.unseen_dim, (int, float)) and 0.0 <= self.unseen_dim <= 1.0):
            raise ValueError(f"OverlayConfig.unseen_dim must be in [0, 1], got {self.unseen_dim!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OverlayConfig":
        """Our field names or the reference's (``overlay_pruned_color``, ``overlay_pruned_alpha``,
        ``video_fps``); other keys of a shared config file are ignored."""
        ours = {"color", "alpha", "fps", "outline", "unseen_dim"}
        fields = {k: v for k, v in data.items() if k in ours}
        fields.update({REFERENCE_NAMES[k]: v for k, v in data.items() if k in REFERENCE_NAMES})
        return cls(**fields)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class ImagePipeline:
    """How one camera's raw frame became the image the ViT saw.

    Args:
        model_size: M, side of the model image (``model.args.image_size``).
        patch_size: P, ViT patch side (``model.args.towers[0].patch_size``).
        crop_area: area share of the center crop (0.9 for the published LIBERO checkpoints), or
            ``None`` without a crop.
        pre_crop_size: S, side of the image the crop was applied to (default: ``model_size``, as
            :meth:`Policy.images` resizes to the model size first).
        raw_size: (H, W) of the raw frame (default: S×S, i.e. the frame already had that size).
        rotate_180: the raw frame was turned by 180° before resizing (LIBERO renders upside down).
    """

    model_size: int = 224
    patch_size: int = 14
    crop_area: float | None = CROP_AREA
    pre_crop_size: int | None = None
    raw_size: tuple[int, int] | None = None
    rotate_180: bool = False

    def __post_init__(self) -> None:
        for name in ("model_size", "patch_size"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise ValueError(f"ImagePipeline.{name} must be a positive int, got {getattr(self, name)!r}")
        if self.model_size % self.patch_size:
            raise ValueError(f"ImagePipeline: model_size {self.model_size} is not a multiple of patch_size {self.patch_size}")
        if self.crop_area is not None and not 0.0 < self.crop_area <= 1.0:
            raise ValueError(f"ImagePipeline.crop_area must be in (0, 1] or None, got {self.crop_area!r}")
        if self.pre_crop_size is not None and not (_is_int(self.pre_crop_size) and self.pre_crop_size >= 2):
            raise ValueError(f"ImagePipeline.pre_crop_size must be an int >= 2, got {self.pre_crop_size!r}")
        if self.raw_size is not None:
            size = tuple(self.raw_size)
            if len(size) != 2 or not all(_is_int(s) and s >= 1 for s in size):
                raise ValueError(f"ImagePipeline.raw_size must be (H, W) positive ints, got {self.raw_size!r}")
            object.__setattr__(self, "raw_size", (int(size[0]), int(size[1])))

    @property
    def grid(self) -> int:
        return self.model_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.grid**2

    @property
    def pre_crop(self) -> int:
        return self.pre_crop_size or self.model_size

    @property
    def raw(self) -> tuple[int, int]:
        return self.raw_size or (self.pre_crop, self.pre_crop)

    def for_frame(self, frame: np.ndarray) -> "ImagePipeline":
        """This pipeline with ``raw_size`` taken from a frame when it was left open."""
        if self.raw_size is None:
            return replace(self, raw_size=tuple(frame.shape[:2]))
        if tuple(frame.shape[:2]) != self.raw_size:
            raise ValueError(f"frame is {frame.shape[0]}x{frame.shape[1]}, the pipeline expects raw_size {self.raw_size}")
        return self


def pipeline_for(model_args, center_crop: bool = True, raw_size: tuple[int, int] | None = None,
                 rotate_180: bool = False, crop_area: float = CROP_AREA) -> ImagePipeline:
    """The pipeline of a :class:`~vla_adp.policy.Policy` (``policy.model.args``, ``policy.center_crop``)."""
    return ImagePipeline(model_size=model_args.image_size, patch_size=model_args.towers[0].patch_size,
                         crop_area=crop_area if center_crop else None, raw_size=raw_size, rotate_180=rotate_180)


# -- geometry (pure) -------------------------------------------------------------------------
def edge_map(p: ImagePipeline, axis: int) -> tuple[float, float]:
    """(a, b) with raw edge = a · model edge + b along ``axis`` (0 = rows, 1 = columns)."""
    m, s = p.model_size, p.pre_crop
    if p.crop_area is None:
        a, b = s / m, 0.0
    else:
        lo, _, hi, _ = center_crop_box(p.crop_area)
        step = (hi - lo) * (s - 1) / (m - 1)  # TF: input centre = lo·(S−1) + i·step
        a, b = step, lo * (s - 1) + 0.5 - 0.5 * step
    scale = p.raw[axis] / s  # resize: edges scale by the size ratio
    a, b = a * scale, b * scale
    if p.rotate_180:
        a, b = -a, p.raw[axis] - b
    return a, b


def patch_boxes(p: ImagePipeline) -> np.ndarray:
    """(G², 4) boxes (top, left, bottom, right) of every patch in raw-frame edge coordinates."""
    g, size = p.grid, p.patch_size
    edges = np.arange(g + 1) * size
    ay, by = edge_map(p, 0)
    ax, bx = edge_map(p, 1)
    ys, xs = ay * edges + by, ax * edges + bx
    rows, cols = np.divmod(np.arange(g * g), g)
    top, bottom = np.minimum(ys[rows], ys[rows + 1]), np.maximum(ys[rows], ys[rows + 1])
    left, right = np.minimum(xs[cols], xs[cols + 1]), np.maximum(xs[cols], xs[cols + 1])
    return np.stack([top, left, bottom, right], axis=1)


def _axis_patch(p: ImagePipeline, axis: int) -> np.ndarray:
    """Patch row (axis 0) or column (axis 1) each raw pixel centre falls in; −1 outside the crop."""
    a, b = edge_map(p, axis)
    model = (np.arange(p.raw[axis]) + 0.5 - b) / a
    idx = np.floor(model / p.patch_size).astype(np.int64)
    return np.where((model >= 0) & (model < p.model_size), idx, -1)


def patch_index_map(p: ImagePipeline) -> np.ndarray:
    """(H, W) token index (row·G + col) of every raw pixel; −1 where the crop discarded it."""
    rows, cols = _axis_patch(p, 0), _axis_patch(p, 1)
    index = rows[:, None] * p.grid + cols[None, :]
    return np.where((rows[:, None] >= 0) & (cols[None, :] >= 0), index, -1)


def kept_mask(p: ImagePipeline, kept: Sequence[int] | None) -> np.ndarray:
    """(H, W) int8: 1 where the pixel's token was kept, 0 pruned, −1 never seen (outside the crop).

    ``kept=None`` means the query ran unpruned (every token kept).
    """
    index = patch_index_map(p)
    keep = np.ones(p.n_patches, bool) if kept is None else _keep_vector(kept, p.n_patches)
    out = np.where(index >= 0, keep[np.clip(index, 0, None)].astype(np.int8), np.int8(-1))
    return out.astype(np.int8)


def _keep_vector(kept: Sequence[int], n: int) -> np.ndarray:
    idx = np.asarray(list(kept), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        # Logs written before kept indices became local held them over all visual tokens.
        raise ValueError(f"kept token indices must be local to the camera's patch grid, 0..{n - 1}, got "
                         f"{idx.min()}..{idx.max()} (indices over all cameras' tokens are not accepted)")
    vec = np.zeros(n, bool)
    vec[idx] = True
    return vec


# -- drawing ---------------------------------------------------------------------------------
def draw_overlay(frame: np.ndarray, kept: Sequence[int] | None, pipeline: ImagePipeline,
                 config: OverlayConfig = OverlayConfig()) -> np.ndarray:
    """The frame with pruned patches tinted: out = (1 − α)·pixel + α·colour, α = alpha / 255; pixels
    outside the crop (never seen by the model) darkened by ``config.unseen_dim``; kept ones unchanged.

    Args:
        frame: (H, W, 3) uint8 raw frame, as the robot saw it.
        kept: kept token indices of this camera (0..G²−1); ``None`` = unpruned query.
        pipeline: how this frame became the model image (``raw_size`` defaults to the frame's).
    """
    if not (isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3):
        raise ValueError(f"frame must be a uint8 (H, W, 3) array, got {getattr(frame, 'dtype', type(frame))} "
                         f"{getattr(frame, 'shape', None)}")
    p = pipeline.for_frame(frame)
    mask = kept_mask(p, kept)
    out = frame.astype(np.float32)
    a = config.alpha / 255.0
    out[mask == 0] = (1 - a) * out[mask == 0] + a * np.asarray(config.color, np.float32)
    out[mask < 0] *= 1.0 - config.unseen_dim
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if config.outline:
        _outline(out, p)
    return out


def _outline(img: np.ndarray, p: ImagePipeline) -> None:
    # Patch borders: darken pixels whose neighbour belongs to another token.
    index = patch_index_map(p)
    edge = np.zeros(index.shape, bool)
    edge[1:, :] |= index[1:, :] != index[:-1, :]
    edge[:, 1:] |= index[:, 1:] != index[:, :-1]
    img[edge] = (img[edge] * 0.6).astype(np.uint8)


def draw_cameras(frames: Sequence[np.ndarray], kept: Sequence[Sequence[int]] | None,
                 pipelines: Sequence[ImagePipeline], config: OverlayConfig = OverlayConfig()) -> list[np.ndarray]:
    """:func:`draw_overlay` for every camera.

    Args:
        kept: one list per camera of kept token indices local to that camera's grid (0..G²−1), as
            ``Policy.infer`` reports and the logs store them; ``None`` = unpruned query.
    """
    if len(pipelines) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(pipelines)} pipelines")
    if kept is None:
        return [draw_overlay(f, None, p, config) for f, p in zip(frames, pipelines)]
    if len(kept) != len(frames):
        raise ValueError(f"kept indices for {len(kept)} cameras, but {len(frames)} frames")
    out = []
    for c, (f, k, p) in enumerate(zip(frames, kept, pipelines)):
        try:
            out.append(draw_overlay(f, k, p, config))
        except ValueError as e:
            raise ValueError(f"camera {c}: {e}") from None
    return out


def side_by_side(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Images in a row on black, top-aligned."""
    h = max(i.shape[0] for i in images)
    w = sum(i.shape[1] for i in images) + gap * (len(images) - 1)
    out = np.zeros((h, w, 3), np.uint8)
    x = 0
    for img in images:
        out[: img.shape[0], x : x + img.shape[1]] = img
        x += img.shape[1] + gap
    return out
