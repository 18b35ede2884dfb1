"""π0's attention mask from two per-token flags (big_vision ``make_att_2d_masks``; openpi
``models_pytorch/pi0_pytorch.py``).

``pad`` (B, S) marks real tokens; ``ar`` (B, S) is 1 where a new block starts. Token i may attend to
token j iff both are real and cumsum(ar)[j] ≤ cumsum(ar)[i]. π0 sets ar = 0 over the prefix
(images + prompt: one bidirectional block), ar = 1 at π0's state token (its own block) and at the
first action token, 0 for the other actions — so the prefix never sees the suffix, the state token
sees the prefix, and the actions see everything before them and each other:

    prefix  [0 0 … 0]   state [1]   actions [1 0 … 0]
"""

from __future__ import annotations

import torch
from torch import Tensor

# openpi's masked logit (``pi0_pytorch.py::_prepare_attention_masks_4d``): finite, so a fully
# masked row (a padding query) gives a uniform softmax instead of NaNs.
MASKED_LOGIT = -2.3819763e38


def attention_mask_2d(pad: Tensor, ar: Tensor) -> Tensor:
    """(B, S) flags -> (B, S, S) boolean: row i may attend to column j."""
    if pad.ndim != 2 or ar.shape != pad.shape:
        raise ValueError(f"pad and ar must both be (B, S), got {tuple(pad.shape)} and {tuple(ar.shape)}")
    blocks = torch.cumsum(ar.long(), dim=1)
    causal = blocks[:, None, :] <= blocks[:, :, None]
    return causal & (pad[:, None, :] & pad[:, :, None])


def mask_bias(allowed: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B, Sq, Sk) boolean -> (B, 1, Sq, Sk) additive bias (0 or openpi's finite masked logit)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed[:, None], zero, torch.tensor(MASKED_LOGIT, dtype=dtype, device=allowed.device))


def positions(pad: Tensor, offset: Tensor | int = 0) -> Tensor:
    """RoPE positions: real tokens count up from ``offset``; padding does not advance them."""
    return torch.cumsum(pad.long(), dim=1) - 1 + (offset if isinstance(offset, int) else offset[:, None])
