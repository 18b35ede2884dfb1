"""Flow matching as π0 publishes it (π0 paper §3, Eq. 1–2; openpi ``models_pytorch/pi0_pytorch.py``).

Time runs from t = 1 (pure noise) to t = 0 (the action chunk) — the reverse of the paper's τ:

    x_t = t·ε + (1 − t)·A          (interpolation; ε ~ N(0, I))
    u_t = ε − A                    (the velocity the model v_θ(x_t, t) regresses)
    x_{t+δ} = x_t + δ·v_θ(x_t, t),  δ = −1/N,  t_k = 1 + k·δ,  k = 0 … N−1   (Euler, N = 10)

Step times are ``1.0 + k·δ`` in double precision then cast to float32, as LeRobot's
``policies/common/flow_matching.py::euler_integrate``; openpi's loop accumulates ``time += δ`` in
float32 instead, which differs in the last bits of t only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def interpolate(actions: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t = t·ε + (1 − t)·A, with t (B,) broadcast over (B, H, A)."""
    t = t[:, None, None]
    return t * noise + (1 - t) * actions


def target_velocity(actions: Tensor, noise: Tensor) -> Tensor:
    """u_t = ε − A (independent of t)."""
    return noise - actions


def step_times(num_steps: int) -> list[float]:
    """t_k = 1 + k·(−1/N) for k = 0 … N−1."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    dt = -1.0 / num_steps
    return [1.0 + k * dt for k in range(num_steps)]


def euler_sample(velocity: Callable[[Tensor, Tensor], Tensor], noise: Tensor, num_steps: int) -> Tensor:
    """Integrate dx/dt = v(x, t) from x_1 = ε to t = 0 with N Euler steps; returns x_0."""
    dt = -1.0 / num_steps
    x = noise
    for t in step_times(num_steps):
        time = torch.full((noise.shape[0],), t, dtype=torch.float32, device=noise.device)
        x = x + dt * velocity(x, time)
    return x


def time_embedding(t: Tensor, dim: int, min_period: float, max_period: float) -> Tensor:
    """Sine-cosine embedding of scalar times (B,) -> (B, dim): [sin(2πt/p), cos(2πt/p)] with
    periods p geometrically spaced from ``min_period`` to ``max_period`` (computed in float64 and cast
    to t's dtype, as openpi's ``create_sinusoidal_pos_embedding``)."""
    if dim % 2:
        raise ValueError(f"time embedding width must be even, got {dim}")
    if t.ndim != 1:
        raise ValueError(f"times must have shape (batch,), got {tuple(t.shape)}")
    dtype = torch.float64 if t.device.type != "mps" else torch.float32
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=dtype, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = (2 * math.pi / period)[None, :] * t.to(dtype)[:, None]
    return torch.cat([angle.sin(), angle.cos()], dim=1).to(t.dtype)
