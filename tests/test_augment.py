"""Random-crop augmentation (OFT's LIBERO training crops) against the TF-exact crop of evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_adp.model.transforms import center_crop_box, crop_and_resize
from vla_adp.train.augment import crop_boxes, random_crops, resample_boxes


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.transpose(2, 0, 1).copy())


def test_each_box_matches_tf_crop_and_resize():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3)).astype(np.float32)
    boxes = np.concatenate([np.array([center_crop_box(0.9)]), crop_boxes(rng, 6, 0.9)])
    ours = resample_boxes(_chw(img)[None].repeat(len(boxes), 1, 1, 1), boxes)
    for box, got in zip(boxes, ours):
        expected = crop_and_resize(img, tuple(box), 32)  # independent: the evaluation's TF-exact kernel
        np.testing.assert_allclose(got.numpy().transpose(1, 2, 0), expected, atol=5e-5)


def test_boxes_have_the_area_and_stay_inside_the_frame():
    boxes = crop_boxes(np.random.default_rng(1), 500, 0.9)
    side = boxes[:, 2:] - boxes[:, :2]
    np.testing.assert_allclose(side, np.sqrt(np.float32(0.9)), atol=1e-6)
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0
    assert boxes[:, 0].std() > 0.01 and boxes[:, 1].std() > 0.01  # they really move


def test_a_views_channels_share_their_box_and_views_are_cropped_apart():
    rng = np.random.default_rng(2)
    view = torch.from_numpy(rng.random((1, 3, 16, 16)).astype(np.float32))
    pixels = torch.cat([view, view * 2.0, view, view * 2.0], dim=1)  # 2 views of 2 tower copies each
    out = random_crops(pixels, views=2, area=0.9, rng=np.random.default_rng(3))
    torch.testing.assert_close(out[:, 3:6], 2.0 * out[:, 0:3])  # one box per view, every tower copy
    assert not torch.allclose(out[:, 0:3], out[:, 6:9])  # the other view got another box
    again = random_crops(pixels, views=2, area=0.9, rng=np.random.default_rng(3))
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # the generator decides everything


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"crop area must be in \(0, 1\], got 1.5"):
        crop_boxes(np.random.default_rng(0), 1, 1.5)
    with pytest.raises(ValueError, match="7 channels do not split into 2 views"):
        random_crops(torch.zeros(1, 7, 4, 4), views=2, area=0.9, rng=np.random.default_rng(0))
