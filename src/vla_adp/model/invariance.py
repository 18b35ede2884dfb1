"""Batch invariance: a row of a batched forward computes exactly what it computes alone (fp32, CPU).

Parallel evaluation answers several episodes' queries in one forward
(:func:`vla_adp.model.batched.forward_rows`); an episode must not depend on which other episodes
shared its forward. Every op of the forward was re-run row by row on the batched op's own inputs
(``benchmarks/batch_invariance.py``; numbers in ``benchmarks/eval_throughput.md``, "Exactness"):
with PyTorch's CPU kernels only two stages depend on the batch, and both depend on the *shape* the
kernel sees, not on the values:

* the proprio projector: one state row is a (1, d) @ (d, D) product, which MKL runs as a GEMV; B rows
  run as a GEMM, whose sums round differently (up to 6e-7 here);
* SiLU in the decoder's MLP: the vectorised kernel works in blocks of 2 × 16 floats (AVX-512) and
  finishes the last ``numel % 32`` elements with a scalar loop whose ``exp`` rounds differently
  (1 ulp). Alone, a row's last elements take the scalar tail whenever S·ffn is not a multiple of 32;
  in a batch the same elements take the vector path (and with 2 threads, the split point moves).

Everything else is row-invariant on the measured shapes: the big matmuls (M = B·S rows), SDPA,
RMSNorm, RoPE's cos/sin, the vision towers, the projector's GELU, the action head. So batch
invariance costs only what these two stages cost when they run per row; the matmuls stay batched.
The model runs them per row when ``OpenVLAOFT.set_batch_invariant(True)`` (the Policy's default on
a CPU); a single row runs the plain op, so batch 1 is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def per_row(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn`` on each row of ``x`` (dim 0) on its own, stacked: every call sees the batch-1 shape."""
    if x.shape[0] == 1:
        return fn(x)
    return torch.cat([fn(row) for row in x.split(1)])


def silu_per_row(x: Tensor) -> Tensor:
    """SiLU computed row by row, so that no row's elements move between the kernel's vector path
    and its scalar tail with the batch size. In place on ``x``'s rows when no gradient is needed
    (``x`` is the fresh gate projection: no copy); else :func:`per_row`."""
    if x.shape[0] == 1:
        return F.silu(x)
    if torch.is_grad_enabled() and x.requires_grad:
        return per_row(F.silu, x)
    for row in x.split(1):
        F.silu(row, inplace=True)
    return x
