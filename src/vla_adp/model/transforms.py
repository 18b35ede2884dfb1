"""Image, proprio and action transforms of the OpenVLA-OFT LIBERO pipeline (docs/reference.md §5; moojink/openvla-oft ``experiments/robot/openvla_utils.py``).

Pure functions on numpy arrays, bit-exact with upstream's TensorFlow ops (moojink/openvla-oft
``experiments/robot/openvla_utils.py``: ``resize_image_for_policy``, ``center_crop_image``) without
TensorFlow; ``tests/test_transforms_tf.py`` compares them with a fixture that
``tests/fixtures/make_tf_image_fixture.py`` writes with TensorFlow itself.

* ``jpeg_round_trip``: ``tf.image.encode_jpeg`` is libjpeg(-turbo) at quality 95, 4:2:0, accurate
  forward DCT — Pillow's encoder writes the same entropy-coded data (only the JFIF density differs,
  which we set to TF's 300 dpi too). ``tf.io.decode_image`` decodes with the *fast integer* IDCT
  (``dct_method=""`` = ``INTEGER_FAST``) and fancy upsampling; Pillow's decoder uses the accurate
  IDCT (up to ±4 grey levels apart on 66 % of values), so decoding goes through libjpeg-turbo via
  ``simplejpeg`` with ``fastdct=True, fastupsample=False``.
* ``resize_lanczos3``: ``tf.image.resize(method="lanczos3", antialias=True)`` is TF's
  ScaleAndTranslate kernel (``scale_and_translate_op.cc``, ``sampling_kernels.h``): per output
  index a span of source pixels with float32 Lanczos-3 weights stretched by 1/scale when shrinking,
  normalised to sum 1; a vertical pass then a horizontal pass, accumulated in float32 in span
  order; then ``tf.round`` (half to even), clip, uint8. Reimplemented operation by operation.
* ``crop_and_resize`` / ``center_crop``: TF's ``crop_and_resize`` CPU kernel in float32 (box side
  ``tf.sqrt(float32(0.9))``, offsets ``(1 − s)/2``, sampling ``y1·(H−1) + i·scale``, interpolation
  ``a + (b − a)·w``), ``convert_image_dtype`` in (× float32(1/255)) and out
  (saturate_cast(x·255.5), truncation).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import math

import numpy as np
from PIL import Image

CROP_AREA = 0.9  # published LIBERO checkpoints were trained with random 90 %-area crops
JPEG_QUALITY = 95  # tf.image.encode_jpeg's default
F32 = np.float32


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


def jpeg_round_trip(img: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """``tf.io.decode_image(tf.image.encode_jpeg(img))``: accurate-DCT encode, fast-IDCT decode."""
    import simplejpeg

    check_image(img)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="JPEG", quality=quality, dpi=(300, 300))
    return simplejpeg.decode_jpeg(buf.getvalue(), colorspace="RGB", fastdct=True, fastupsample=False)


@functools.lru_cache(maxsize=1)
def _libm_sinf():
    """The C library's ``sinf`` (what TF's kernel calls), or ``None`` where it cannot be loaded."""
    try:
        libm = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        fn = libm.sinf
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return fn


def _sinf(x: np.ndarray) -> np.ndarray:
    """float32 sin as TF computes it: glibc's ``sinf``, which is not correctly rounded (1 ulp off
    for about 1 % of arguments, enough to move a resized pixel across a .5 boundary). Without a C
    ``sinf``: the correctly rounded value."""
    fn = _libm_sinf()
    if fn is None:
        return np.sin(x.astype(np.float64)).astype(F32)
    return np.array([fn(float(v)) for v in x.ravel()], F32).reshape(x.shape)


def _lanczos3(x: np.ndarray) -> np.ndarray:
    """TF's ``LanczosKernelFunc(3)`` in float32: 3·sin(πx)·sin(πx/3)/(π²x²), 1 at |x| <= 1e-3."""
    radius, pi = F32(3.0), F32(3.14159265359)
    x = np.abs(x.astype(F32))
    px = pi * x
    with np.errstate(divide="ignore", invalid="ignore"):
        w = radius * _sinf(px) * _sinf(px / radius) / (pi * pi * x * x)
    return np.where(x > radius, F32(0.0), np.where(x <= 1e-3, F32(1.0), w)).astype(F32)


@functools.lru_cache(maxsize=16)
def scale_and_translate_spans(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts (out,), weights (out, span)) of TF's ``ComputeSpansCore`` for Lanczos-3, antialias,
    scale = float32(out)/float32(in), no translation."""
    scale = F32(out_size) / F32(in_size)
    inv_scale = F32(1.0 / float(scale))
    kernel_scale = max(inv_scale, F32(1.0))
    radius = F32(3.0)
    span = min(2 * int(math.ceil(float(radius * kernel_scale))) + 1, in_size)
    one_over = F32(1.0) / kernel_scale
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, span), F32)  # read-only once cached
    for x in range(out_size):
        sample = (F32(x) + F32(0.5)) * inv_scale + F32(-0.0)
        if sample < 0 or sample > in_size:
            continue
        lo = int(math.ceil(float(sample - radius * kernel_scale - F32(0.5))))
        hi = int(math.floor(float(sample + radius * kernel_scale - F32(0.5))))
        lo, hi = min(max(lo, 0), in_size - 1), min(max(hi, 0), in_size - 1) + 1
        pos = np.arange(lo, hi).astype(F32) + F32(0.5) - sample
        w = _lanczos3(np.abs(pos * one_over))
        total = F32(0.0)
        for v in w:  # float32, in order
            total = F32(total + v)
        if abs(total) >= F32(1000.0) * np.finfo(F32).tiny:
            weights[x, : hi - lo] = w * (F32(1.0) / total)
        starts[x] = lo
    starts.flags.writeable = weights.flags.writeable = False
    return starts, weights


def _gather(img: np.ndarray, starts: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Σ_j w[o, j]·img[start_o + j] along ``axis``, accumulated in float32 in span order."""
    n = img.shape[axis]
    moved = np.moveaxis(img, axis, 0)
    acc = np.zeros((len(starts), *moved.shape[1:]), F32)
    shape = (-1,) + (1,) * (moved.ndim - 1)
    for j in range(weights.shape[1]):
        idx = np.minimum(starts + j, n - 1)  # past the image the weight is 0 (TF skips them)
        w = np.where(starts + j < n, weights[:, j], F32(0.0)).reshape(shape)
        acc = acc + w * moved[idx]
    return np.moveaxis(acc, 0, axis)


def resize_lanczos3(img: np.ndarray, size: int) -> np.ndarray:
    """``tf.image.resize(img, (size, size), "lanczos3", antialias=True)``, rounded to uint8 as
    upstream's ``resize_image_for_policy`` does (``tf.round``, clip to [0, 255])."""
    h, w = img.shape[:2]
    x = img.astype(F32)
    rows = _gather(x, *scale_and_translate_spans(h, size), axis=0)
    out = _gather(rows, *scale_and_translate_spans(w, size), axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_for_policy(img: np.ndarray, size: int = 224) -> np.ndarray:
    """Upstream ``resize_image_for_policy``: JPEG q95 round trip, then Lanczos-3 to ``size``²."""
    return resize_lanczos3(jpeg_round_trip(img), size)


def crop_and_resize(img: np.ndarray, box: tuple[float, float, float, float], out: int) -> np.ndarray:
    """TF ``crop_and_resize`` (CPU kernel, bilinear) for one box on a float32 image (H, W, C).

    Output row i samples ``in_y = y1·(H−1) + i·((y2 − y1)·(H−1)/(out − 1))`` and interpolates
    ``top + (bottom − top)·(in_y − floor(in_y))`` between rows floor/ceil; the same along columns
    first. Every step in float32 as the kernel computes it.
    """
    img = np.asarray(img, F32)
    h, w = img.shape[:2]
    y1, x1, y2, x2 = (F32(v) for v in box)

    def axis(lo, hi, n):
        step = (hi - lo) * F32(n - 1) / F32(out - 1)
        pos = lo * F32(n - 1) + np.arange(out, dtype=F32) * step
        return np.floor(pos).astype(np.int64), np.ceil(pos).astype(np.int64), (pos - np.floor(pos)).astype(F32)

    ty, by, ly = axis(y1, y2, h)
    lx, rx, wx = axis(x1, x2, w)
    wx = wx[None, :, None]
    top = img[ty][:, lx] + (img[ty][:, rx] - img[ty][:, lx]) * wx
    bottom = img[by][:, lx] + (img[by][:, rx] - img[by][:, lx]) * wx
    return top + (bottom - top) * ly[:, None, None]


def center_crop_box(area: float = CROP_AREA) -> tuple[float, float, float, float]:
    """Upstream's box in float32: side s = sqrt(float32(area)), offset (1 − s)/2, end offset + s."""
    s = np.clip(np.sqrt(F32(area)), F32(0.0), F32(1.0))
    off = (F32(1.0) - s) / F32(2.0)
    return (float(off), float(off), float(off + s), float(off + s))


def center_crop(img: np.ndarray, area: float = CROP_AREA) -> np.ndarray:
    """Upstream ``center_crop_image``: 90 %-area center crop resized back to the input's size."""
    check_image(img)
    x = img.astype(F32) * F32(1.0 / 255.0)  # convert_image_dtype: multiply by float32(1/255)
    y = np.clip(crop_and_resize(x, center_crop_box(area), img.shape[0]), F32(0.0), F32(1.0))
    return np.clip(y * F32(255.5), 0, 255).astype(np.uint8)  # saturate_cast(x·255.5): truncation


def normalize_pixels(img: np.ndarray, means, stds) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (3·T, H, W): one normalised copy per vision tower."""
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    chans = [(x - np.asarray(m, np.float32)[:, None, None]) / np.asarray(s, np.float32)[:, None, None]
             for m, s in zip(means, stds)]
    return np.concatenate(chans, axis=0)


def policy_image(img: np.ndarray, size: int, crop: bool = True) -> np.ndarray:
    """One camera image as the policy feeds it: resized to ``size`` if it is not already, then
    center-cropped where the checkpoint was trained with crops (docs/reference.md §5)."""
    if img.shape[:2] != (size, size):
        img = resize_for_policy(img, size)
    return center_crop(img) if crop else img


def pixel_batch(images: list[np.ndarray], towers):
    """Prepared camera images -> a (1, 3·T·N, H, W) float32 tensor: per image, one normalised copy per tower."""
    import torch  # this module stays importable without torch (simulator processes)

    per = [normalize_pixels(img, [t.mean for t in towers], [t.std for t in towers]) for img in images]
    return torch.from_numpy(np.concatenate(per, axis=0))[None]


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
