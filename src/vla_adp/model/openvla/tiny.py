"""Tiny checkpoints in the ``openvla/openvla-7b`` layout, built offline in about a second.

A folder that loads like the published one (Prismatic config with ``norm_stats``, sharded safetensors,
SentencePiece tokenizer, preprocessor config) but holds tiny random towers, a tiny causal decoder and a
locally trained tokenizer whose vocabulary is ``text_config.vocab_size - 64``, so the last 256 ids are
the action bins exactly as in Llama-2's 32000-piece vocabulary.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import sentencepiece as spm
import torch

from vla_adp.constants import get_platform
from vla_adp.model.config import LlamaArgs
from vla_adp.model.openvla.checkpoint import save_openvla_checkpoint
from vla_adp.model.openvla.config import OpenVLAArgs
from vla_adp.model.openvla.openvla import OpenVLA
from vla_adp.model.tiny import init_tiny_weights, tiny_norm_stats, tiny_towers, train_tokenizer

PAD = 64  # pad_to_multiple_of of the published config


def tiny_openvla_args(pieces: int, image_size: int = 224, patch: int = 14, llm_dim: int = 64, llm_layers: int = 2,
                      n_heads: int = 4, n_kv_heads: int = 4, fused: bool = True) -> OpenVLAArgs:
    """Tiny shapes around a tokenizer of ``pieces`` pieces (the embedding has ``pieces + 64`` rows)."""
    towers = tiny_towers(image_size, patch, fused)
    vision = sum(t.width for t in towers)
    llm = LlamaArgs(dim=llm_dim, n_layers=llm_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                    ffn_dim=2 * llm_dim + 44, vocab_size=pieces + PAD, rms_eps=1e-6)
    hidden = (4 * vision, llm_dim) if fused else ()
    return OpenVLAArgs(towers=towers, llm=llm, projector_hidden=hidden, pad_to_multiple_of=PAD)


def make_tiny_openvla_checkpoint(folder: str | Path, seed: int = 0, dataset: str = "libero_spatial_no_noops",
                                 shards: int = 2, write_statistics_file: bool = False, **arg_overrides) -> Path:
    """Write a complete tiny ``openvla-7b``-layout folder.

    Args:
        dataset: the key of ``norm_stats`` (LIBERO-shaped 7-D statistics, gripper unmasked).
        shards: split the safetensors into this many shards (exercises the index).
        write_statistics_file: also write ``dataset_statistics.json`` (as a fine-tuning run does).
        arg_overrides: forwarded to :func:`tiny_openvla_args` (``llm_layers``, ``n_kv_heads``, ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(Path(tmp) / "tokenizer.model")
        pieces = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
        model = OpenVLA(tiny_openvla_args(pieces, **arg_overrides))
        init_tiny_weights(model, seed)
        total = sum(p.numel() * 2 for p in model.parameters())
        stats = tiny_norm_stats(get_platform("libero"), dataset, seed)
        save_openvla_checkpoint(model, folder, stats, tok, max_shard_bytes=max(1, total // shards + 1),
                                write_statistics_file=write_statistics_file)
    return folder
