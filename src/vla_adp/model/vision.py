"""Fused DINOv2 + SigLIP featurizer built from timm (docs/reference.md §1; timm ``vit_large_patch14_reg4_dinov2`` / ``vit_so400m_patch14_siglip_224``).

    pixels (B, 6·N, H, W) ── split per image ──► [DINOv2 | SigLIP] ── block depth-2 ──► concat ──► (B, N·P, Σwidth)

Per image the channels are ``[DINOv2 rgb, SigLIP rgb]`` (6), images stacked along channels. Each
tower yields the *output of its second-to-last block*, without the final norm and without prefix
(class/register) tokens; the towers are concatenated on the feature axis (DINOv2 first) and the
images on the token axis. A single-tower config (3 channels per image) is supported too.

The towers are stock timm ``VisionTransformer``s; the published checkpoints name DINOv2's LayerScale
parameter ``scale_factor`` (HF mangles "gamma"), which the loader maps to timm's ``gamma``.
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from vla_adp.model.config import VisionTowerArgs


def build_tower(args: VisionTowerArgs) -> nn.Module:
    """A timm ViT with the given geometry, random weights, no classifier."""
    # timm computes the MLP width as int(width * mlp_ratio); nudge the ratio so it lands exactly.
    mlp_ratio = (args.mlp_hidden + 0.5) / args.width
    extra = {"reg_tokens": args.reg_tokens} if args.reg_tokens else {}
    return timm.create_model(
        args.timm_id,
        pretrained=False,
        num_classes=0,
        img_size=args.image_size,
        patch_size=args.patch_size,
        embed_dim=args.width,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=mlp_ratio,
        **extra,
    )


class FusedFeaturizer(nn.Module):
    """``featurizer`` (tower 0, DINOv2) and optionally ``fused_featurizer`` (tower 1, SigLIP)."""

    def __init__(self, towers: tuple[VisionTowerArgs, ...], n_images: int):
        super().__init__()
        self.tower_args = towers
        self.n_images = n_images
        self.featurizer = build_tower(towers[0])
        self.fused_featurizer = build_tower(towers[1]) if len(towers) > 1 else None

    @property
    def channels_per_image(self) -> int:
        return 3 * len(self.tower_args)

    def tower_features(self, tower: nn.Module, args: VisionTowerArgs, x: Tensor) -> Tensor:
        """Output of block ``depth - 2`` without prefix tokens and final norm: (B, P, width)."""
        (feats,) = tower.forward_intermediates(
            x, indices=[args.feature_block], norm=False, stop_early=True,
            output_fmt="NLC", intermediates_only=True,
        )
        return feats

    def image_features(self, pixels: Tensor) -> Tensor:
        """One image's 3 or 6 channels -> (B, P, Σwidth)."""
        feats = [self.tower_features(self.featurizer, self.tower_args[0], pixels[:, :3])]
        if self.fused_featurizer is not None:
            feats.append(self.tower_features(self.fused_featurizer, self.tower_args[1], pixels[:, 3:6]))
        return torch.cat(feats, dim=-1)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (B, C·N, H, W) -> patch features (B, N·P, Σwidth), image 0 first."""
        c = self.channels_per_image
        if pixels.shape[1] != c * self.n_images:
            raise ValueError(
                f"pixel tensor has {pixels.shape[1]} channels, expected {c} per image × {self.n_images} images"
            )
        per_image = [self.image_features(pixels[:, i * c : (i + 1) * c]) for i in range(self.n_images)]
        return torch.cat(per_image, dim=1)
