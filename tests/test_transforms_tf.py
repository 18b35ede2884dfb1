"""The image pipeline against OpenVLA-OFT's own TensorFlow ops, bit for bit, without TensorFlow.

``tests/fixtures/tf_image_pipeline.npz`` was written by ``tests/fixtures/make_tf_image_fixture.py``
(TensorFlow 2.21 CPU, upstream ``resize_image_for_policy`` / ``center_crop_image``) on two rendered
LIBERO frames (libero_spatial task 0, episode 0) and uniform noise.
"""

from pathlib import Path

import numpy as np
import pytest

from vla_adp.model import transforms as T

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "tf_image_pipeline.npz")
CASES = sorted({k.split("/")[0] for k in FIXTURE.files if "/" in k})
# The wrist frame keeps only its input and final crop (fixture size); it is checked end to end.
STAGED = [c for c in CASES if f"{c}/decoded" in FIXTURE]


def assert_same(ours: np.ndarray, tf: np.ndarray, what: str) -> None:
    assert ours.shape == tf.shape and ours.dtype == tf.dtype == np.uint8, what
    diff = ours.astype(int) - tf
    share = float((diff != 0).mean())
    assert share == 0.0, f"{what}: {share:.4%} of values differ from TensorFlow, by up to {np.abs(diff).max()}"


def test_fixture_has_rendered_libero_frames_and_noise():
    assert {"libero_agentview_256", "libero_wrist_256", "noise_64", "noise_56"} <= set(CASES)
    assert set(STAGED) == {"libero_agentview_256", "noise_64", "noise_56"}
    assert FIXTURE["libero_agentview_256/input"].shape == (256, 256, 3)
    assert FIXTURE["libero_agentview_256/cropped"].shape == (224, 224, 3)


@pytest.mark.parametrize("case", STAGED)
def test_jpeg_round_trip_decodes_like_tf_decode_image(case):
    assert_same(T.jpeg_round_trip(FIXTURE[f"{case}/input"]), FIXTURE[f"{case}/decoded"], f"{case} JPEG")


@pytest.mark.parametrize("case", STAGED)
def test_lanczos3_resize_matches_tf_image_resize(case):
    out = FIXTURE[f"{case}/resized"]
    assert_same(T.resize_lanczos3(FIXTURE[f"{case}/decoded"], out.shape[0]), out, f"{case} resize")


@pytest.mark.parametrize("case", STAGED)
def test_center_crop_matches_tf_crop_and_resize(case):
    assert_same(T.center_crop(FIXTURE[f"{case}/resized"]), FIXTURE[f"{case}/cropped"], f"{case} crop")


@pytest.mark.parametrize("case", CASES)
def test_whole_pipeline_matches_upstream_end_to_end(case):
    x = FIXTURE[f"{case}/input"]
    out = FIXTURE[f"{case}/cropped"]
    assert_same(T.center_crop(T.resize_for_policy(x, out.shape[0])), out, f"{case} resize + crop")


def test_kernel_uses_the_c_librarys_sinf():
    # glibc's sinf is 1 ulp off the correctly rounded value for ~1 % of arguments, and TF's
    # Lanczos weights use it; without it 2 of the 150 528 resized agentview values differ by 1.
    assert T._libm_sinf() is not None
    x = np.linspace(0.01, 9.4, 20001, dtype=np.float32)
    exact = np.sin(x.astype(np.float64)).astype(np.float32)
    assert (T._sinf(x) != exact).any()


def test_crop_box_and_scale_are_float32_like_tf():
    y1, x1, y2, x2 = T.center_crop_box(0.9)
    s = np.sqrt(np.float32(0.9))
    assert y1 == x1 == float((np.float32(1) - s) / np.float32(2)) and y2 == float(np.float32(y1) + s)
    # convert_image_dtype multiplies by float32(1/255); dividing by 255 differs on 126 of 256 values.
    v = np.arange(256, dtype=np.float32)
    assert ((v * np.float32(1 / 255)) != (v / np.float32(255))).sum() == 126
