"""Random-crop augmentation for behaviour cloning, OpenVLA-OFT's image augmentation.

OFT trains its LIBERO checkpoints with a random crop of 90 % of the image area (square, anywhere
inside the frame) resized back to the input size, and evaluates on the center crop of the same area
(``center_crop_image`` in ``experiments/robot/openvla_utils.py``; here
:func:`vla_adp.model.transforms.center_crop`). The crop here samples the box the way TF's
``crop_and_resize`` does (:func:`vla_adp.model.transforms.crop_and_resize`: output pixel i at
``y1·(H−1) + i·(y2 − y1)·(H−1)/(out − 1)``, bilinear), so a box at the center is the evaluation's
crop up to float rounding; the policy then sees at evaluation the middle of what it saw in training.

    pixels (B, views·C, H, W) ─► per sample and view: box side sqrt(area), offset ~ U[0, 1 − side]²
                               ─► bilinear resample back to (H, W)  (grid_sample, align_corners)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def crop_boxes(rng: np.random.Generator, n: int, area: float) -> np.ndarray:
    """``n`` square boxes (y1, x1, y2, x2) in [0, 1] units of area ``area``, uniformly placed."""
    if not 0.0 < area <= 1.0:
        raise ValueError(f"crop area must be in (0, 1], got {area!r}")
    side = float(np.sqrt(np.float32(area)))
    off = rng.uniform(0.0, 1.0 - side, size=(n, 2))
    return np.concatenate([off, off + side], axis=1)


def resample_boxes(images: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """Each image (N, C, H, W) cropped to its box (N, 4: y1, x1, y2, x2) and resized to (H, W).

    Bilinear, TF ``crop_and_resize``'s sampling grid: box edges land on pixel centres 0 and H − 1.
    """
    n, _, h, w = images.shape
    b = torch.as_tensor(boxes, dtype=torch.float32)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = b[:, 3] - b[:, 1]  # x scale
    theta[:, 0, 2] = b[:, 1] + b[:, 3] - 1.0
    theta[:, 1, 1] = b[:, 2] - b[:, 0]  # y scale
    theta[:, 1, 2] = b[:, 0] + b[:, 2] - 1.0
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=True)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


def random_crops(pixels: torch.Tensor, views: int, area: float, rng: np.random.Generator) -> torch.Tensor:
    """A fresh crop per sample and per camera view of a batch ``(B, views·C, H, W)``.

    The channels of one view (one normalised copy per vision tower) share its box, as they are
    the same image; the views of a sample are cropped independently.
    """
    bsz, chans, h, w = pixels.shape
    if chans % views:
        raise ValueError(f"{chans} channels do not split into {views} views")
    per_view = pixels.reshape(bsz * views, chans // views, h, w)
    out = resample_boxes(per_view, crop_boxes(rng, bsz * views, area))
    return out.reshape(bsz, chans, h, w)
