"""Image, proprio and action transforms of the OpenVLA-OFT LIBERO pipeline (spec §2.4–§2.5, §5).

All pure functions on numpy arrays; no TensorFlow.

Where pixels can differ from the reference (which uses TensorFlow 2.15):
* ``resize_for_policy``: PIL's JPEG encoder (libjpeg, q95, 4:2:0) and PIL's Lanczos filter stand
  in for ``tf.io.encode_jpeg`` + ``tf.image.resize(method="lanczos3", antialias=True)``. The JPEG
  round trip is bit-identical for the same libjpeg; the Lanczos kernels differ in support handling
  at the borders and in rounding, so a few pixels differ by one grey level (occasionally two).
* ``center_crop``: TF's ``crop_and_resize`` (bilinear, its sampling rule) and
  ``convert_image_dtype(saturate=True)`` (truncation of x·255.5) are reimplemented exactly.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

CROP_AREA = 0.9  # published LIBERO checkpoints were trained with random 90 %-area crops


# -- images --------------------------------------------------------------------------------
def rotate_180(img: np.ndarray) -> np.ndarray:
    """LIBERO renders upside down: reverse both H and W (``img[::-1, ::-1]``)."""
    return np.ascontiguousarray(img[::-1, ::-1])


def check_image(img: np.ndarray, name: str = "image") -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        shape = getattr(img, "shape", None)
        dtype = getattr(img, "dtype", type(img).__name__)
        raise ValueError(f"{name} must be a uint8 array of shape (H, W, 3), got {dtype} {shape}")
    return img


def resize_for_policy(img: np.ndarray, size: int = 224) -> np.ndarray:
    """JPEG q95 round trip, then antialiased Lanczos resize to ``size``² (RLDS builder mimic)."""
    check_image(img)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    decoded = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(decoded.resize((size, size), Image.LANCZOS), dtype=np.uint8)


def crop_and_resize(img: np.ndarray, box: tuple[float, float, float, float], out: int) -> np.ndarray:
    """TF ``crop_and_resize`` for one box and bilinear sampling, on float images (H, W, C).

    TF samples output row i at ``y1·(H-1) + i·(y2-y1)·(H-1)/(out-1)`` (same for columns).
    """
    h, w = img.shape[:2]
    y1, x1, y2, x2 = box
    ys = y1 * (h - 1) + np.arange(out) * (y2 - y1) * (h - 1) / (out - 1)
    xs = x1 * (w - 1) + np.arange(out) * (x2 - x1) * (w - 1) / (out - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1i, x1i = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy = (ys - y0)[:, None, None]
    dx = (xs - x0)[None, :, None]
    top = img[y0][:, x0] * (1 - dx) + img[y0][:, x1i] * dx
    bottom = img[y1i][:, x0] * (1 - dx) + img[y1i][:, x1i] * dx
    return top * (1 - dy) + bottom * dy


def center_crop_box(area: float = CROP_AREA) -> tuple[float, float, float, float]:
    s = math.sqrt(area)
    return ((1 - s) / 2, (1 - s) / 2, (1 + s) / 2, (1 + s) / 2)


def center_crop(img: np.ndarray, area: float = CROP_AREA) -> np.ndarray:
    """90 %-area center crop resized back to the input size, with TF's float→uint8 rule."""
    check_image(img)
    x = img.astype(np.float32) / 255.0
    y = np.clip(crop_and_resize(x, center_crop_box(area), img.shape[0]).astype(np.float32), 0.0, 1.0)
    return (y * 255.5).astype(np.uint8)  # saturate_cast(x·255.5): truncation, not rounding


def normalize_pixels(img: np.ndarray, means, stds) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3·T, H, W): one normalised copy per vision tower."""
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    chans = [(x - np.asarray(m, np.float32)[:, None, None]) / np.asarray(s, np.float32)[:, None, None]
             for m, s in zip(means, stds)]
    return np.concatenate(chans, axis=0)


# -- proprio and actions -------------------------------------------------------------------
def _bounds(stats: dict, normalization: str) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = ("q01", "q99") if normalization == "bounds_q99" else ("min", "max")
    return np.asarray(stats[lo], np.float64), np.asarray(stats[hi], np.float64)


def normalize_proprio(state: np.ndarray, stats: dict, normalization: str = "bounds_q99") -> np.ndarray:
    """p' = clip(2(p - lo)/(hi - lo + 1e-8) - 1, -1, 1) where the mask is true (default all)."""
    state = np.asarray(state, np.float64)
    lo, hi = _bounds(stats, normalization)
    mask = np.asarray(stats.get("mask", np.ones_like(lo, bool)), bool)
    normed = np.where(mask, 2 * (state - lo) / (hi - lo + 1e-8) - 1, state)
    return np.clip(normed, -1, 1)


def unnormalize_actions(actions: np.ndarray, stats: dict, normalization: str = "bounds_q99") -> np.ndarray:
    """a = 0.5(n + 1)(hi - lo + 1e-8) + lo where the mask is true; masked-out dims pass through."""
    actions = np.asarray(actions, np.float64)
    lo, hi = _bounds(stats, normalization)
    mask = np.asarray(stats.get("mask", np.ones_like(lo, bool)), bool)
    return np.where(mask, 0.5 * (actions + 1) * (hi - lo + 1e-8) + lo, actions)


def libero_gripper(action: np.ndarray) -> np.ndarray:
    """[0, 1] gripper -> env convention: 2g-1, sign (0 stays 0), negate (OpenVLA family)."""
    out = np.array(action, dtype=np.float64, copy=True)
    out[..., -1] = -np.sign(2 * out[..., -1] - 1)
    return out


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion -> axis-angle, without mutating the input."""
    q = np.array(quat, dtype=np.float64, copy=True)
    q[3] = np.clip(q[3], -1.0, 1.0)
    den = np.sqrt(1.0 - q[3] * q[3])
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(q[3]) / den
