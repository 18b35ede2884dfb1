"""π0 / π0.5 (flow-matching VLAs): PaliGemma prefix + Gemma action expert, LeRobot checkpoint layout."""

from vla_adp.model.pi0.config import GemmaArgs, Pi0Args, SiglipArgs, published_args, tiny_args
from vla_adp.model.pi0.pi0 import (ExpertContext, ExpertObserver, Pi0Inputs, Pi0Model, Pi0Output, Prefix,
                                   PrefixCache)

__all__ = ["GemmaArgs", "Pi0Args", "SiglipArgs", "published_args", "tiny_args", "ExpertContext", "ExpertObserver",
           "Pi0Inputs", "Pi0Model", "Pi0Output", "Prefix", "PrefixCache"]
