"""Image/proprio/action transforms (docs/reference.md §5) against independent references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla_adp.model import transforms as T


def grid_sample_crop(img: np.ndarray, box, out: int) -> np.ndarray:
    """TF crop_and_resize sample points expressed through torch.grid_sample (align_corners=True)."""
    h, w = img.shape[:2]
    y1, x1, y2, x2 = box
    ys = y1 * (h - 1) + np.arange(out) * (y2 - y1) * (h - 1) / (out - 1)
    xs = x1 * (w - 1) + np.arange(out) * (x2 - x1) * (w - 1) / (out - 1)
    gy, gx = np.meshgrid(2 * ys / (h - 1) - 1, 2 * xs / (w - 1) - 1, indexing="ij")
    grid = torch.from_numpy(np.stack([gx, gy], -1))[None].double()
    src = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    return F.grid_sample(src, grid, mode="bilinear", align_corners=True)[0].permute(1, 2, 0).numpy()


def test_crop_and_resize_matches_grid_sample():
    rng = np.random.default_rng(0)
    img = rng.random((37, 41, 3))
    box = T.center_crop_box(0.9)
    np.testing.assert_allclose(T.crop_and_resize(img, box, 29), grid_sample_crop(img, box, 29), atol=1e-5)  # float32 like TF


def test_center_crop_uses_truncation_of_x_times_255_5():
    img = np.full((8, 8, 3), 200, np.uint8)
    # 200/255 * 255.5 = 200.39 -> 200 (truncation); a constant image survives the crop unchanged.
    assert (T.center_crop(img) == 200).all()
    img[:] = 255
    assert (T.center_crop(img) == 255).all()


def test_center_crop_box_is_90_percent_area():
    y1, x1, y2, x2 = T.center_crop_box(0.9)
    assert (y2 - y1) * (x2 - x1) == pytest.approx(0.9)


def test_rotate_180_and_resize_for_policy():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    rot = T.rotate_180(img)
    assert (rot[0, 0] == img[-1, -1]).all() and rot.flags.c_contiguous
    small = T.resize_for_policy(img, 224)
    assert small.shape == (224, 224, 3) and small.dtype == np.uint8
    smooth = np.tile(np.linspace(0, 255, 256, dtype=np.uint8)[None, :, None], (256, 1, 3))
    assert np.abs(T.resize_for_policy(smooth, 224).astype(int)[:, 1:-1] - np.linspace(0, 255, 224)[None, 1:-1, None]).max() < 4


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), [[1, 2, 3]]])
def test_bad_images_are_rejected_with_shape_and_dtype(bad):
    with pytest.raises(ValueError, match=r"uint8 array of shape \(H, W, 3\)"):
        T.check_image(bad)


def test_proprio_and_action_normalisation_round_trip():
    stats = {"q01": [-1.0, 0.0, 2.0], "q99": [1.0, 4.0, 3.0], "mask": [True, True, False]}
    a = np.array([0.5, 2.0, 0.7])
    n = T.normalize_proprio(a, stats)
    np.testing.assert_allclose(n, [0.5, 0.0, 0.7], atol=1e-7)
    back = T.unnormalize_actions(n, stats)
    np.testing.assert_allclose(back, a, atol=1e-7)
    assert T.normalize_proprio(np.array([5.0, 9.0, 0.0]), stats).max() == 1.0  # clipped


def test_libero_gripper_post_processing():
    acts = np.array([[0, 0, 0, 0, 0, 0, 0.9], [0, 0, 0, 0, 0, 0, 0.1], [0, 0, 0, 0, 0, 0, 0.5]])
    out = T.libero_gripper(acts)
    assert out[:, -1].tolist() == [-1.0, 1.0, -0.0]  # open(1)->-1, close(0)->+1, 0.5 -> sign(0)=0
    assert acts[0, -1] == 0.9  # input untouched


def test_quat2axisangle_matches_robosuite():
    from robosuite.utils.transform_utils import quat2axisangle as rs

    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(T.quat2axisangle(q), rs(q.copy()), atol=1e-12)
    np.testing.assert_array_equal(T.quat2axisangle(np.array([0, 0, 0, 1.0])), np.zeros(3))
