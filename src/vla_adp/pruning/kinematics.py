"""Windowed forward kinematics of 7-DoF delta actions (seed paper Def. 4.1, Eq. 14).

An action a = [Δx, Δy, Δz, Δφ, Δθ, Δψ, g] is one body-frame increment of the end-effector pose:

    T_{t+1} = T_t · [[R(Δφ, Δθ, Δψ), v], [0ᵀ, 1]],   v = (Δx, Δy, Δz),   R = R_x(Δφ) R_y(Δθ) R_z(Δψ)

(right-multiply; the paper's Euler order R_x R_y R_z, which is scipy's intrinsic ``"XYZ"``). Written
out, p_{t+1} = p_t + R_t v and R_{t+1} = R_t R: the increment's own rotation acts only from the next
step on, and each step's translation is v turned by a rotation, so ‖p_{t+1} − p_t‖ = ‖v‖. The path
length Σ‖p_{t+1} − p_t‖ of Eq. 15 therefore equals Σ‖v_u‖ whatever the rotations and the start pose;
only the net displacement ‖p_end − p_start‖ depends on them.

The gripper command (and any column after the sixth) is ignored.
"""

from __future__ import annotations

import numpy as np

# Below this angle the rotation is the identity (the reference's axis-angle helper uses 1e-12 too).
_EPS_ANGLE = 1e-12


def rot_x(angle: float) -> np.ndarray:
    """Rotation by ``angle`` (rad) about x: (3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(angle: float) -> np.ndarray:
    """Rotation by ``angle`` (rad) about y: (3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(angle: float) -> np.ndarray:
    """Rotation by ``angle`` (rad) about z: (3, 3)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def euler_to_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """R_x(roll) · R_y(pitch) · R_z(yaw) (paper Def. 4.1; scipy ``from_euler("XYZ", ...)``)."""
    return rot_x(roll) @ rot_y(pitch) @ rot_z(yaw)


def rotvec_to_matrix(rotvec) -> np.ndarray:
    """Axis-angle vector (3,) to a rotation matrix by Rodrigues' formula.

    R = I + sin θ K + (1 − cos θ) K², with θ = ‖r‖ and K the cross-product matrix of r/θ.
    """
    r = np.asarray(rotvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(r))
    if theta < _EPS_ANGLE:
        return np.eye(3)
    x, y, z = r / theta
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(theta) * k + (1.0 - np.cos(theta)) * (k @ k)


def compose_chunk(pos0, rot0, actions) -> np.ndarray:
    """End-effector positions along one chunk of body-frame delta actions (paper Eq. 14).

    Args:
        pos0: start position (3,).
        rot0: start orientation as a (3, 3) matrix; ``None`` = identity.
        actions: (chunk, >=6) un-normalised actions [Δx, Δy, Δz, Δφ, Δθ, Δψ, ...].

    Returns:
        (chunk + 1, 3) positions: the start, then the position after every action.
    """
    acts = np.asarray(actions, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[1] < 6:
        raise ValueError(f"actions must be (chunk, >=6) [dx, dy, dz, droll, dpitch, dyaw, ...], got shape {acts.shape}")
    p = np.asarray(pos0, dtype=np.float64).reshape(3).copy()
    r = np.eye(3) if rot0 is None else np.asarray(rot0, dtype=np.float64).reshape(3, 3)
    out = [p.copy()]
    for a in acts:
        p = p + r @ a[:3]  # translation of T_t · [R v; 0 1] is R_t v: the step's R acts from the next step on
        r = r @ euler_to_matrix(*a[3:6])
        out.append(p.copy())
    return np.stack(out)
