"""Tiny π0 / π0.5 checkpoints in LeRobot's hub layout, built offline in about a second.

The folder looks like ``lerobot/pi05_libero_finetuned`` (two 224-px cameras + one empty slot, an 8-D
LIBERO state, 7-D actions, quantile statistics) but holds a tiny random model (shapes in
``vla_adp.json``) and a small locally trained SentencePiece tokenizer with PaliGemma's special ids
(pad 0, eos 1, bos 2, unk 3).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from vla_adp.model.pi0.checkpoint import lerobot_config, save_pi0_checkpoint
from vla_adp.model.pi0.config import Pi0Args, tiny_args
from vla_adp.model.pi0.pi0 import Pi0Model
from vla_adp.model.pi0.processor import prompt_text
from vla_adp.model.tiny import INSTRUCTIONS

LIBERO_CAMERAS = ("image", "image2")  # agentview, wrist (LeRobot's LIBERO feature names)
LIBERO_STATE_DIM, LIBERO_ACTION_DIM = 8, 7


def train_prompt_tokenizer(path: Path, vocab_size: int = 300) -> Path:
    """A BPE SentencePiece model with PaliGemma's special ids, trained on LIBERO-style π0.5 prompts."""
    rng = np.random.default_rng(0)
    corpus = [prompt_text(t, rng.integers(0, 256, LIBERO_STATE_DIM)) for t in INSTRUCTIONS for _ in range(4)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus + [prompt_text(t) for t in INSTRUCTIONS]), model_writer=buf,
        vocab_size=vocab_size, model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        normalization_rule_name="identity", remove_extra_whitespaces=False, split_digits=True,
        hard_vocab_limit=False, minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


def libero_stats(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """LIBERO-shaped statistics (every stat LeRobot records, so any normalisation mode works)."""
    rng = np.random.default_rng(seed)

    def block(dim: int) -> dict[str, torch.Tensor]:
        lo, hi = -rng.uniform(0.2, 1.0, dim), rng.uniform(0.2, 1.0, dim)
        mean, std = (lo + hi) / 2, (hi - lo) / 4
        return {k: torch.tensor(v, dtype=torch.float32) for k, v in dict(
            mean=mean, std=std, min=lo - 0.1, max=hi + 0.1, q01=lo, q99=hi, q10=lo / 2, q90=hi / 2).items()}

    return {"observation.state": block(LIBERO_STATE_DIM), "action": block(LIBERO_ACTION_DIM)}


def init_tiny_weights(model: Pi0Model, seed: int) -> None:
    """Random weights large enough that every stage (norm offsets, adaRMS gates) changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() == 1 else fan_in ** -0.5))


def make_tiny_pi0_checkpoint(folder: str | Path, family: str = "pi05", seed: int = 0, n_action_steps: int = 4,
                             norm: str = "QUANTILES", **overrides) -> Path:
    """Write a complete tiny checkpoint folder in LeRobot's layout.

    Args:
        family: "pi05" or "pi0".
        n_action_steps: actions executed per chunk (LeRobot's LIBERO runs use 10 of 50).
        norm: STATE / ACTION normalisation mode written to ``normalization_mapping``.
        overrides: :class:`~vla_adp.model.pi0.config.Pi0Args` fields (e.g. ``chunk_size``).
    """
    folder = Path(folder)
    overrides.setdefault("tokenizer_max_length", 64)  # room for the 8 state numbers of a π0.5 prompt
    args: Pi0Args = tiny_args(family, n_cameras=len(LIBERO_CAMERAS) + 1, **overrides)
    torch.manual_seed(seed)
    model = Pi0Model(args)
    init_tiny_weights(model, seed)
    config = lerobot_config(args, LIBERO_STATE_DIM, LIBERO_ACTION_DIM, LIBERO_CAMERAS,
                            {"VISUAL": "IDENTITY", "STATE": norm, "ACTION": norm}, n_action_steps)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_prompt_tokenizer(Path(tmp) / "tokenizer.model")
        if spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size() > args.vocab_size:
            raise ValueError(f"the tiny tokenizer does not fit vocab_size {args.vocab_size}")
        return save_pi0_checkpoint(model, folder, config, libero_stats(seed), tok)
