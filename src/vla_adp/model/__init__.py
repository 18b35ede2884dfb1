"""OpenVLA-OFT, checkpoint-compatible, without a transformers fork."""

from vla_adp.model.config import LlamaArgs, OFTArgs, VisionTowerArgs
from vla_adp.model.openvla_oft import OpenVLAOFT, OFTOutput

__all__ = ["LlamaArgs", "OFTArgs", "VisionTowerArgs", "OpenVLAOFT", "OFTOutput"]
