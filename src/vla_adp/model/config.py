"""Model shapes of OpenVLA-OFT (docs/reference.md §1, §3; the published ``config.json``).

The published ``config.json`` names the vision towers only by their timm ids; their geometry is
read from the weight shapes (:func:`vla_adp.model.checkpoint.derive_args`), so a scaled-down folder in
the published layout loads without extra fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_adp.seam.decoder import DecoderShape
from vla_adp.seam.layout import TokenLayout

# Head size of each known timm family, used when a tower's width is read from the weights.
TIMM_HEAD_DIM = {"dinov2": 64, "siglip": 72, "vit": 64}


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class VisionTowerArgs:
    """One timm ViT of the (fused) featurizer.

    Args:
        timm_id: timm model name, e.g. ``vit_large_patch14_reg4_dinov2.lvd142m``.
        image_size: input side in pixels.
        patch_size: patch side in pixels.
        width: embedding dimension.
        depth: number of transformer blocks (all stored; features come from ``depth - 2``).
        heads: attention heads.
        mlp_hidden: hidden size of each block's MLP.
        reg_tokens: register tokens (DINOv2-reg: 4).
        class_token: whether the model has a class token.
        layer_scale: whether blocks carry LayerScale (DINOv2) parameters.
        mean / std: per-channel pixel normalisation of this tower.
    """

    timm_id: str
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    reg_tokens: int = 0
    class_token: bool = False
    layer_scale: bool = False
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        _positive(self, "image_size", "patch_size", "width", "depth", "heads", "mlp_hidden")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.depth < 2:
            raise ValueError(f"depth must be >= 2 (features come from block depth-2), got {self.depth}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def feature_block(self) -> int:
        """Index of the block whose output is the feature (second-to-last, docs/reference.md §1)."""
        return self.depth - 2


@dataclass(frozen=True)
class LlamaArgs:
    """Llama-2 decoder shapes (``text_config``)."""

    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    ffn_dim: int = 11008
    vocab_size: int = 32064
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        _positive(self, "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head_dim {self.dim // self.n_heads} must be even for rotate-half RoPE")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def shape(self) -> DecoderShape:
        """What the FLOPs model needs (:mod:`vla_adp.seam.flops`)."""
        return DecoderShape(self.n_layers, self.dim, self.ffn_dim, self.n_heads, self.n_kv_heads, self.head_dim)


@dataclass(frozen=True)
class OFTArgs:
    """Everything needed to build :class:`~vla_adp.model.openvla_oft.OpenVLAOFT`.

    Args:
        towers: one (single backbone) or two (fused DINOv2 + SigLIP) vision towers, in channel order.
        llm: decoder shapes.
        projector_hidden: widths of the projector's hidden layers (fused: ``(4·vision_dim, llm_dim)``).
        proprio_dim / action_dim / chunk: platform shapes (heads are sized from them).
        head_hidden: width of the L1 action head's MLP-ResNet; ``head_blocks`` its residual blocks.
        n_images: camera views per query.
        pad_to_multiple_of: vocabulary padding; ``vocab_size - pad`` tokens are real (discrete path).
        n_action_bins: bins of the discrete action path.
    """

    towers: tuple[VisionTowerArgs, ...]
    llm: LlamaArgs = field(default_factory=LlamaArgs)
    projector_hidden: tuple[int, ...] = (8704, 4096)
    proprio_dim: int = 8
    action_dim: int = 7
    chunk: int = 8
    head_hidden: int = 4096
    head_blocks: int = 2
    n_images: int = 2
    use_proprio: bool = True
    pad_to_multiple_of: int = 64
    n_action_bins: int = 256

    def __post_init__(self) -> None:
        _positive(self, "proprio_dim", "action_dim", "chunk", "head_hidden", "n_images")
        if len(self.towers) not in (1, 2):
            raise ValueError(f"expected 1 or 2 vision towers, got {len(self.towers)}")
        if len({t.n_patches for t in self.towers}) != 1:
            raise ValueError(f"vision towers disagree on patch count: {[t.n_patches for t in self.towers]}")

    @property
    def vision_dim(self) -> int:
        return sum(t.width for t in self.towers)

    @property
    def patches_per_image(self) -> int:
        return self.towers[0].n_patches

    @property
    def image_size(self) -> int:
        return self.towers[0].image_size

    @property
    def n_action_slots(self) -> int:
        return self.chunk * self.action_dim

    def token_layout(self, n_prompt: int) -> TokenLayout:
        """The unpruned sequence of a query with ``n_prompt`` prompt ids after BOS (incl. the '▁').

        The one place OpenVLA-OFT's layout is built: every camera's patches after BOS, the proprio
        token where the model has one, the prompt, ``chunk × action_dim`` slots, </s>.
        """
        return TokenLayout((self.patches_per_image,) * self.n_images, n_prompt, self.n_action_slots,
                           int(self.use_proprio))


def openvla_7b_args(n_images: int = 2) -> OFTArgs:
    """The full OpenVLA-7B-OFT shapes (docs/reference.md §1, §3; LIBERO platform)."""
    dino = VisionTowerArgs(
        "vit_large_patch14_reg4_dinov2.lvd142m", 224, 14, 1024, 24, 16, 4096,
        reg_tokens=4, class_token=True, layer_scale=True,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )
    siglip = VisionTowerArgs("vit_so400m_patch14_siglip_224", 224, 14, 1152, 27, 16, 4304)
    return OFTArgs(towers=(dino, siglip), llm=LlamaArgs(), n_images=n_images)
