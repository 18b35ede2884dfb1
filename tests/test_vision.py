"""Fused featurizer against timm's own intermediate-layer API (docs/reference.md §1)."""

import torch

from vla_adp.model.config import VisionTowerArgs
from vla_adp.model.vision import FusedFeaturizer

DINO = VisionTowerArgs("vit_large_patch14_reg4_dinov2.lvd142m", 56, 14, 64, 3, 1, 128, reg_tokens=4,
                       class_token=True, layer_scale=True)
SIGLIP = VisionTowerArgs("vit_so400m_patch14_siglip_224", 56, 14, 72, 3, 1, 144)


def test_features_equal_timm_get_intermediate_layers():
    torch.manual_seed(0)
    feat = FusedFeaturizer((DINO, SIGLIP), n_images=2).eval()
    for p in feat.parameters():
        p.data.normal_(0, 0.2)
    pixels = torch.randn(2, 12, 56, 56)
    with torch.no_grad():
        got = feat(pixels)
        ref = []
        for img in range(2):
            x = pixels[:, 6 * img : 6 * img + 6]
            # What the reference calls (timm 0.9.10 semantics): n = {depth - 2}, no norm, no prefix.
            (d,) = feat.featurizer.get_intermediate_layers(x[:, :3], n={DINO.depth - 2})
            (s,) = feat.fused_featurizer.get_intermediate_layers(x[:, 3:], n={SIGLIP.depth - 2})
            ref.append(torch.cat([d, s], dim=-1))
        ref = torch.cat(ref, dim=1)
    assert got.shape == (2, 2 * 16, 64 + 72)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_feature_is_second_to_last_block_without_prefix_tokens():
    torch.manual_seed(0)
    feat = FusedFeaturizer((DINO,), n_images=1).eval()
    tower = feat.featurizer
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        h = tower.norm_pre(tower._pos_embed(tower.patch_embed(x)))
        for blk in tower.blocks[: DINO.depth - 1]:
            h = blk(h)
        manual = h[:, tower.num_prefix_tokens :]
        got = feat(x)
    assert tower.num_prefix_tokens == 5  # class + 4 registers
    torch.testing.assert_close(got, manual, atol=1e-6, rtol=0)
