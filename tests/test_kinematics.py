"""Windowed FK of delta actions (paper Def. 4.1, Eq. 14) against scipy and a literal SE(3) product."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from vla_adp.pruning.kinematics import compose_chunk, euler_to_matrix, rot_x, rot_y, rot_z, rotvec_to_matrix

ATOL = 1e-12
angle = st.floats(-np.pi, np.pi, allow_nan=False)
small = st.floats(-1.0, 1.0, allow_nan=False)


@given(angle)
def test_elementary_rotations_match_scipy(a):
    for fn, axis in ((rot_x, "x"), (rot_y, "y"), (rot_z, "z")):
        np.testing.assert_allclose(fn(a), Rotation.from_euler(axis, a).as_matrix(), atol=ATOL)


@given(angle, angle, angle)
def test_euler_is_intrinsic_xyz(r, p, y):
    m = euler_to_matrix(r, p, y)
    np.testing.assert_allclose(m, rot_x(r) @ rot_y(p) @ rot_z(y), atol=ATOL)
    np.testing.assert_allclose(m, Rotation.from_euler("XYZ", [r, p, y]).as_matrix(), atol=ATOL)
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=ATOL)


def test_euler_order_matters():
    """Extrinsic 'xyz' (= R_z R_y R_x) is a different rotation: the convention is not vacuous."""
    r, p, y = 0.3, -0.7, 1.1
    assert not np.allclose(euler_to_matrix(r, p, y), Rotation.from_euler("xyz", [r, p, y]).as_matrix())


@given(st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=3, max_size=3))
def test_rotvec_matches_scipy(v):
    np.testing.assert_allclose(rotvec_to_matrix(v), Rotation.from_rotvec(v).as_matrix(), atol=1e-10)


def test_rotvec_zero_is_identity():
    np.testing.assert_array_equal(rotvec_to_matrix([0.0, 0.0, 0.0]), np.eye(3))


def test_compose_by_hand():
    """A yaw of 90° acts from the next step on: x then x-in-the-turned-frame = (1, 1, 0)."""
    acts = np.array([[1, 0, 0, 0, 0, np.pi / 2, 1.0], [1, 0, 0, 0, 0, 0, -1.0]])
    pos = compose_chunk(np.zeros(3), None, acts)
    np.testing.assert_allclose(pos, [[0, 0, 0], [1, 0, 0], [1, 1, 0]], atol=ATOL)


def _literal_eq14(pos0, rot0, actions):
    """T_{t+1} = T_t · [[R(Δφ, Δθ, Δψ), v], [0, 1]] with 4x4 matrices and scipy's intrinsic XYZ."""
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = rot0, pos0
    out = [t[:3, 3].copy()]
    for a in actions:
        step = np.eye(4)
        step[:3, :3], step[:3, 3] = Rotation.from_euler("XYZ", a[3:6]).as_matrix(), a[:3]
        t = t @ step
        out.append(t[:3, 3].copy())
    return np.stack(out)


chunks = st.integers(1, 10).flatmap(
    lambda n: st.lists(st.lists(small, min_size=7, max_size=7), min_size=n, max_size=n)).map(np.array)


@settings(max_examples=60, deadline=None)
@given(chunks, st.lists(small, min_size=3, max_size=3), st.lists(small, min_size=3, max_size=3))
def test_compose_matches_literal_se3_product(acts, pos0, rv0):
    rot0 = Rotation.from_rotvec(rv0).as_matrix()
    got = compose_chunk(pos0, rot0, acts)
    assert got.shape == (len(acts) + 1, 3)
    np.testing.assert_allclose(got, _literal_eq14(np.array(pos0), rot0, acts), atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(chunks, st.lists(small, min_size=3, max_size=3))
def test_path_length_ignores_rotations(acts, rv0):
    """Body-frame composition: each step moves by R_t v, so Σ‖p_{t+1} − p_t‖ = Σ‖v_u‖."""
    pos = compose_chunk(np.ones(3), rotvec_to_matrix(rv0), acts)
    path = np.linalg.norm(np.diff(pos, axis=0), axis=1).sum()
    np.testing.assert_allclose(path, np.linalg.norm(acts[:, :3], axis=1).sum(), atol=1e-10)


def test_net_displacement_depends_on_rotations():
    straight = np.array([[1, 0, 0, 0, 0, 0, 0]] * 4, dtype=float)
    turning = straight.copy()
    turning[:, 5] = np.pi / 2  # quarter turn each step: a closed square
    net = [np.linalg.norm(p[-1] - p[0]) for p in (compose_chunk(np.zeros(3), None, a) for a in (straight, turning))]
    np.testing.assert_allclose(net, [4.0, 0.0], atol=ATOL)


@pytest.mark.parametrize("bad", [np.zeros(7), np.zeros((3, 5)), np.zeros((2, 3, 7))])
def test_compose_rejects_bad_actions(bad):
    with pytest.raises(ValueError, match="actions must be"):
        compose_chunk(np.zeros(3), None, bad)
