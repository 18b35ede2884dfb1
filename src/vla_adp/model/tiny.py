"""Tiny checkpoints in exactly the published OpenVLA-OFT layout, built offline in well under a second.

Tests and newcomers run every code path (loader, transforms, pruners, runners, server) on a folder
that looks like ``moojink/openvla-7b-oft-finetuned-libero-spatial`` but holds tiny random towers, a
tiny decoder and a locally trained SentencePiece tokenizer.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from vla_adp.constants import Platform, get_platform
from vla_adp.model.checkpoint import save_checkpoint
from vla_adp.model.config import LlamaArgs, OFTArgs, VisionTowerArgs
from vla_adp.model.openvla_oft import OpenVLAOFT
from vla_adp.model.tokenizer import prompt_text

INSTRUCTIONS = (
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "pick up the alphabet soup and place it in the basket",
    "open the top drawer and put the bowl inside",
    "put both the alphabet soup and the tomato sauce in the basket",
    "turn on the stove and put the moka pot on it",
    "push the red button down", "open the drawer", "close the drawer", "open the window",
    "close the window", "reach the red goal", "push the puck to the goal", "pick up the puck and place it",
)


def train_tokenizer(path: Path, vocab_size: int = 400, extra_text: tuple[str, ...] = ()) -> Path:
    """A Llama-convention BPE SentencePiece model (unk 0, BOS 1, EOS 2, byte fallback)."""
    corpus = [prompt_text(t) for t in INSTRUCTIONS + tuple(extra_text)] * 8 + list(INSTRUCTIONS)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, hard_vocab_limit=False,
        minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    return path


def tiny_towers(image_size: int = 224, patch: int = 14, fused: bool = True) -> tuple[VisionTowerArgs, ...]:
    """Two-block DINOv2 (+ SigLIP when ``fused``) towers of one head each: the Prismatic backbone, tiny."""
    dino = VisionTowerArgs("vit_large_patch14_reg4_dinov2.lvd142m", image_size, patch, 64, 2, 1, 128,
                           reg_tokens=4, class_token=True, layer_scale=True,
                           mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    siglip = VisionTowerArgs("vit_so400m_patch14_siglip_224", image_size, patch, 72, 2, 1, 144)
    return (dino, siglip) if fused else (dino,)


def tiny_args(vocab: int, platform: Platform, n_images: int = 2, image_size: int = 224, patch: int = 14,
              llm_dim: int = 64, llm_layers: int = 2, fused: bool = True) -> OFTArgs:
    towers = tiny_towers(image_size, patch, fused)
    vision = sum(t.width for t in towers)
    padded = -(-(vocab + 1) // 64) * 64  # + <PAD>, padded to a multiple of 64 as OpenVLA does
    llm = LlamaArgs(dim=llm_dim, n_layers=llm_layers, n_heads=4, n_kv_heads=4, ffn_dim=2 * llm_dim + 44,
                    vocab_size=padded, rms_eps=1e-6)
    return OFTArgs(towers=towers, llm=llm, projector_hidden=(4 * vision, llm_dim), proprio_dim=platform.proprio_dim,
                   action_dim=platform.action_dim, chunk=platform.chunk, head_hidden=llm_dim, n_images=n_images)


def tiny_norm_stats(platform: Platform, dataset: str = "libero_spatial_no_noops", seed: int = 0) -> dict:
    """LIBERO-shaped statistics: gripper (last action dim) not normalised."""
    rng = np.random.default_rng(seed)
    a, p = platform.action_dim, platform.proprio_dim
    q01 = -rng.uniform(0.1, 0.9, a)
    q99 = rng.uniform(0.1, 0.9, a)
    q01[-1], q99[-1] = 0.0, 1.0
    pq01, pq99 = -rng.uniform(0.1, 1.0, p), rng.uniform(0.1, 1.0, p)

    def block(lo, hi, mask=None):
        d = {"mean": ((lo + hi) / 2).tolist(), "std": ((hi - lo) / 4).tolist(), "min": (lo - 0.1).tolist(),
             "max": (hi + 0.1).tolist(), "q01": lo.tolist(), "q99": hi.tolist()}
        if mask is not None:
            d["mask"] = mask
        return d

    return {dataset: {"action": block(q01, q99, [True] * (a - 1) + [False]), "proprio": block(pq01, pq99),
                      "num_transitions": 1000, "num_trajectories": 10}}


def init_tiny_weights(model: OpenVLAOFT, seed: int) -> None:
    """Random weights with enough scale that every stage changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma",)):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
            elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() == 1 else 1.0 / max(1, p.shape[-1]) ** 0.5))


def make_tiny_checkpoint(folder: str | Path, seed: int = 0, platform: str | Platform = "libero",
                         dataset: str = "libero_spatial_no_noops", shards: int = 2, **arg_overrides) -> Path:
    """Write a complete tiny checkpoint folder in the published layout.

    Args:
        shards: split the safetensors into this many shards (exercises the index).
        arg_overrides: forwarded to :func:`tiny_args` (``llm_layers``, ``image_size``, ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    platform = get_platform(platform)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(Path(tmp) / "tokenizer.model")
        vocab = spm.SentencePieceProcessor(model_file=str(tok)).get_piece_size()
        args = tiny_args(vocab, platform, **arg_overrides)
        model = OpenVLAOFT(args)
        init_tiny_weights(model, seed)
        total = sum(p.numel() * 2 for n, p in model.named_parameters() if not n.startswith(("action_head", "proprio")))
        save_checkpoint(model, folder, tiny_norm_stats(platform, dataset, seed), tok, step=seed,
                        max_shard_bytes=max(1, total // shards + 1), platform=platform)
    return folder
