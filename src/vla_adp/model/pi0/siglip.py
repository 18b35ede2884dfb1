"""SigLIP vision tower as PaliGemma uses it: every patch token, no pooling head.

    image (B,3,H,W) ─► Conv2d patch P, stride P ─► + learned position table ─► (B, N, W)
                   ─► [Block × depth] ─► LayerNorm ─► patch tokens (B, N, W)
    Block:  h = x + Attn(LN₁(x));  out = h + fc₂(gelu_tanh(fc₁(LN₂(h))))

Module names follow transformers' ``models/siglip/modeling_siglip.py`` (``embeddings.patch_embedding``,
``encoder.layers.{i}.self_attn.q_proj``, ``post_layernorm``) so that a published state dict maps
onto this module by a prefix only; the numerics are those of that file (LayerNorm ε 1e-6, tanh GELU,
softmax in float32), written here without the transformers dependency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_adp.model.pi0.config import SiglipArgs


class SiglipVisionTower(nn.Module):
    def __init__(self, args: SiglipArgs):
        super().__init__()
        self.args = args
        self.embeddings = PatchEmbeddings(args)
        self.encoder = Encoder(args)
        self.post_layernorm = nn.LayerNorm(args.width, eps=args.ln_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, 3, H, W) in [-1, 1] -> patch tokens (B, N, width)."""
        return self.post_layernorm(self.encoder(self.embeddings(pixels)))


class PatchEmbeddings(nn.Module):
    def __init__(self, args: SiglipArgs):
        super().__init__()
        self.patch_embedding = nn.Conv2d(3, args.width, args.patch_size, stride=args.patch_size)
        self.position_embedding = nn.Embedding(args.num_patches, args.width)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype))  # (B, W, g, g)
        return x.flatten(2).transpose(1, 2) + self.position_embedding.weight  # (B, N, W)


class Encoder(nn.Module):
    def __init__(self, args: SiglipArgs):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(args) for _ in range(args.depth))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class EncoderLayer(nn.Module):
    def __init__(self, args: SiglipArgs):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(args.width, eps=args.ln_eps)
        self.self_attn = Attention(args)
        self.layer_norm2 = nn.LayerNorm(args.width, eps=args.ln_eps)
        self.mlp = Mlp(args)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Attention(nn.Module):
    def __init__(self, args: SiglipArgs):
        super().__init__()
        self.heads = args.num_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(args.width, args.width) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, n, w = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, N, N)
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        return self.out_proj((probs @ v).transpose(1, 2).reshape(b, n, w))


class Mlp(nn.Module):
    def __init__(self, args: SiglipArgs):
        super().__init__()
        self.fc1 = nn.Linear(args.width, args.mlp_dim)
        self.fc2 = nn.Linear(args.mlp_dim, args.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))
