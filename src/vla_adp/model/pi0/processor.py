"""π0 / π0.5 input and output processing as LeRobot runs it (pure functions + one tokenizer class).

* Normalisation (``processor/normalize_processor.py``): MEAN_STD ``(x − μ)/(σ + ε)``; QUANTILES
  ``2(x − q01)/(q99 − q01) − 1`` (π0.5's default); MIN_MAX ``2(x − min)/(max − min) − 1``; inverses
  for the action. ε = 1e-8 where a range is zero.
* Images (``policies/pi05/modeling_pi05.py::_preprocess_images`` → openpi ``resize_with_pad``):
  [0, 1] floats, aspect-preserving bilinear resize to 224 and centred zero padding, then ×2 − 1.
  Missing cameras are all −1 with their mask False.
* π0.5 prompt (``policies/pi05/processor_pi05.py::Pi05PrepareStateTokenizerProcessorStep``): the
  normalised state is cut into 256 bins over [−1, 1] and written into the text,
  ``"Task: {task}, State: {b₁ b₂ …};\\nAction: "``; π0 prompts are ``"{task}\\n"``. Tokenised with
  PaliGemma's SentencePiece (BOS first), right-padded to ``tokenizer_max_length``, truncated if longer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-8
STATE_BINS = 256


def _range(lo: Tensor, hi: Tensor) -> Tensor:
    d = hi - lo
    return torch.where(d == 0, torch.full_like(d, EPS), d)


def normalize(x: Tensor, stats: dict[str, Tensor], mode: str) -> Tensor:
    if mode == "IDENTITY":
        return x
    if mode == "MEAN_STD":
        return (x - stats["mean"]) / (stats["std"] + EPS)
    if mode == "QUANTILES":
        return 2.0 * (x - stats["q01"]) / _range(stats["q01"], stats["q99"]) - 1.0
    if mode == "MIN_MAX":
        return 2.0 * (x - stats["min"]) / _range(stats["min"], stats["max"]) - 1.0
    raise ValueError(f"normalisation mode must be IDENTITY, MEAN_STD, QUANTILES or MIN_MAX, got {mode!r}")


def unnormalize(y: Tensor, stats: dict[str, Tensor], mode: str) -> Tensor:
    if mode == "IDENTITY":
        return y
    if mode == "MEAN_STD":
        return y * stats["std"] + stats["mean"]
    if mode == "QUANTILES":
        return (y + 1.0) * _range(stats["q01"], stats["q99"]) / 2.0 + stats["q01"]
    if mode == "MIN_MAX":
        return (y + 1.0) / 2.0 * _range(stats["min"], stats["max"]) + stats["min"]
    raise ValueError(f"normalisation mode must be IDENTITY, MEAN_STD, QUANTILES or MIN_MAX, got {mode!r}")


def pad_vector(x: Tensor, width: int) -> Tensor:
    """Zero-pad the last dim to ``width`` (state to max_state_dim, actions to max_action_dim)."""
    if x.shape[-1] > width:
        raise ValueError(f"vector of width {x.shape[-1]} does not fit the model's {width}")
    return F.pad(x, (0, width - x.shape[-1]))


def resize_with_pad(images: Tensor, side: int) -> Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, side, side) in [-1, 1]: keep aspect, centre-pad with 0."""
    b, c, h, w = images.shape
    if (h, w) != (side, side):
        ratio = max(w / side, h / side)
        rh, rw = int(h / ratio), int(w / ratio)
        images = F.interpolate(images.float(), size=(rh, rw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
        top, left = (side - rh) // 2, (side - rw) // 2
        images = F.pad(images, (left, side - rw - left, top, side - rh - top), value=0.0)
    return images * 2.0 - 1.0


def discretize_state(state: np.ndarray) -> np.ndarray:
    """Normalised state in [−1, 1] -> bin index 0 … 255 (values outside clip to the end bins)."""
    return np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def prompt_text(task: str, state_bins: np.ndarray | None = None) -> str:
    """π0.5's prompt with the discretised state (``state_bins``), or π0's when it is None."""
    cleaned = task.strip().replace("_", " ").replace("\n", " ")
    if state_bins is None:
        return f"{cleaned}\n"
    return f"Task: {cleaned}, State: {' '.join(map(str, state_bins.tolist()))};\nAction: "


class PromptTokenizer:
    """SentencePiece with PaliGemma's conventions: BOS first, right padding with the pad id."""

    def __init__(self, model_file: str | Path, max_length: int):
        path = Path(model_file)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer model not found: {path} (expected PaliGemma's SentencePiece "
                                    "'tokenizer.model')")
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.max_length = max_length
        if self.sp.bos_id() < 0:
            raise ValueError(f"{path}: the tokenizer defines no BOS piece, which PaliGemma prompts start with")
        self.pad_id = max(self.sp.pad_id(), 0)

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """-> ids (B, max_length), mask (B, max_length) bool."""
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(texts), self.max_length, dtype=torch.bool)
        for i, text in enumerate(texts):
            row = [self.sp.bos_id(), *self.sp.encode(text)][: self.max_length]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask
