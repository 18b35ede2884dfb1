"""OpenVLA's action vocabulary and un-normalisation, as upstream computes them (numpy, float64).

From ``openvla/openvla`` ``prismatic/vla/action_tokenizer.py`` (``ActionTokenizer``) and
``prismatic/extern/hf/modeling_prismatic.py`` (``OpenVLAForActionPrediction.predict_action``):

    bins        = linspace(-1, 1, n_bins)                 256 edges
    bin_centers = (bins[:-1] + bins[1:]) / 2              255 centres
    bin(token)  = clip(n_real_vocab - token - 1, 0, 254)  n_real_vocab = vocab_size - pad_to_multiple_of
    normalised  = bin_centers[bin(token)]
    action      = where(mask, 0.5·(normalised + 1)·(q99 - q01) + q01, normalised)

Token ``n_real_vocab - 1`` (31999) is the highest bin; ids outside the last 256 clip to the end bins,
as upstream (greedy decoding is not restricted to action ids). Note that upstream's un-normalisation has
no ``+ 1e-8`` in the range, unlike OpenVLA-OFT's (:func:`vla_adp.model.transforms.unnormalize_actions`).
"""

from __future__ import annotations

import numpy as np


def bin_centers(n_bins: int = 256) -> np.ndarray:
    """The ``n_bins - 1`` centres of ``np.linspace(-1, 1, n_bins)`` (float64, as upstream)."""
    bins = np.linspace(-1, 1, n_bins)
    return (bins[:-1] + bins[1:]) / 2.0


def token_bins(token_ids: np.ndarray, n_real_vocab: int, n_bins: int = 256) -> np.ndarray:
    """Bin index of each generated id: ``clip(n_real_vocab - id - 1, 0, n_bins - 2)``."""
    ids = np.asarray(token_ids, dtype=np.int64)
    return np.clip(n_real_vocab - ids - 1, 0, n_bins - 2)


def tokens_to_actions(token_ids: np.ndarray, n_real_vocab: int, n_bins: int = 256) -> np.ndarray:
    """Generated ids (any shape) -> normalised actions in [-1, 1] (float64), upstream's decoding."""
    return bin_centers(n_bins)[token_bins(token_ids, n_real_vocab, n_bins)]


def actions_to_tokens(actions: np.ndarray, n_real_vocab: int, n_bins: int = 256) -> np.ndarray:
    """The inverse direction (``ActionTokenizer.__call__``): clip to [-1, 1], ``digitize``, ``n_real_vocab - d``."""
    clipped = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    return n_real_vocab - np.digitize(clipped, np.linspace(-1, 1, n_bins))


def unnormalize_actions(normalized: np.ndarray, stats: dict) -> np.ndarray:
    """q01/q99 bounds where ``mask`` is true (default: all), pass-through elsewhere (``predict_action``)."""
    lo, hi = np.asarray(stats["q01"], dtype=np.float64), np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(lo, dtype=bool)), dtype=bool)
    normalized = np.asarray(normalized, dtype=np.float64)
    return np.where(mask, 0.5 * (normalized + 1) * (hi - lo) + lo, normalized)
