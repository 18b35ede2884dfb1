"""OpenVLA (autoregressive, ``openvla/openvla-7b``): Prismatic backbone + causal Llama-2, bin action tokens."""

from vla_adp.model.openvla.config import OpenVLAArgs, openvla_7b_args
from vla_adp.model.openvla.openvla import OpenVLA, OpenVLAInputs, OpenVLAOutput

__all__ = ["OpenVLAArgs", "openvla_7b_args", "OpenVLA", "OpenVLAInputs", "OpenVLAOutput"]
