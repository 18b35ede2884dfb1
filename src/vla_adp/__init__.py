"""vla-adp: action-aware dynamic pruning of visual tokens for OpenVLA-OFT-style policies."""

__version__ = "0.2.0"
