"""Shapes of π0 / π0.5: SigLIP + Gemma (PaliGemma) prefix, a smaller Gemma action expert.

The named variants are openpi's ``src/openpi/models/gemma.py::get_config`` (``gemma_2b``,
``gemma_300m``) and PaliGemma's SigLIP So400m/14 at 224 px (``google/paligemma-3b-pt-224``:
width 1152, 27 blocks, 16 heads, MLP 4304). The defaults of :class:`Pi0Args` are LeRobot's
``policies/pi05/configuration_pi05.py::PI05Config`` (chunk 50, 32-D padded state/action, 10 Euler
steps, 200 prompt tokens) and, for π0, ``policies/pi0/configuration_pi0.py`` (48 prompt tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


def _positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class GemmaArgs:
    """One Gemma decoder (the PaliGemma language model or the action expert).

    Args:
        width: hidden size.
        depth: decoder layers.
        mlp_dim: GeGLU hidden size.
        num_heads: query heads.
        num_kv_heads: key/value heads (1 = multi-query attention, as in Gemma 2B).
        head_dim: per-head size (256 in both published variants, so width ≠ heads·head_dim for 300M).
        rms_eps: RMSNorm epsilon.
        rope_theta: RoPE base.
    """

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float = 1e-6
    rope_theta: float = 10_000.0

    def __post_init__(self) -> None:
        _positive(self, "width", "depth", "mlp_dim", "num_heads", "num_kv_heads", "head_dim")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")


@dataclass(frozen=True)
class SiglipArgs:
    """The SigLIP vision tower (no pooling head: PaliGemma uses every patch token).

    Args:
        image_size: input side in pixels.
        patch_size: patch side in pixels.
        width: embedding size.
        depth: encoder blocks.
        num_heads: attention heads.
        mlp_dim: MLP hidden size.
        ln_eps: LayerNorm epsilon.
    """

    image_size: int = 224
    patch_size: int = 14
    width: int = 1152
    depth: int = 27
    num_heads: int = 16
    mlp_dim: int = 4304
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        _positive(self, "image_size", "patch_size", "width", "depth", "num_heads", "mlp_dim")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_VARIANTS = {
    "gemma_2b": GemmaArgs(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaArgs(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
}
PALIGEMMA_VOCAB = 257_152
FAMILIES = ("pi0", "pi05")


@dataclass(frozen=True)
class Pi0Args:
    """A π0 (``pi05=False``) or π0.5 (``pi05=True``) model.

    Args:
        pi05: π0.5 (adaRMS time conditioning of the expert, state as discrete prompt tokens) or π0
            (a continuous state token and an action-time MLP in the suffix).
        vision / vlm / expert: the three towers. The expert shares attention with the VLM layer by
            layer, so depth, heads, kv heads and head size must agree.
        vocab_size: PaliGemma's vocabulary.
        chunk_size: actions per chunk (openpi's ``action_horizon``).
        max_action_dim / max_state_dim: padded action / state width.
        num_steps: Euler steps of the sampler.
        min_period / max_period: the sinusoidal time embedding's periods.
        n_cameras: image slots in the prefix (missing cameras are masked out, not dropped).
        tokenizer_max_length: prompt tokens after padding.
    """

    pi05: bool = True
    vision: SiglipArgs = field(default_factory=SiglipArgs)
    vlm: GemmaArgs = GEMMA_VARIANTS["gemma_2b"]
    expert: GemmaArgs = GEMMA_VARIANTS["gemma_300m"]
    vocab_size: int = PALIGEMMA_VOCAB
    chunk_size: int = 50
    max_action_dim: int = 32
    max_state_dim: int = 32
    num_steps: int = 10
    min_period: float = 4e-3
    max_period: float = 4.0
    n_cameras: int = 3
    tokenizer_max_length: int = 200

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "chunk_size", "max_action_dim", "max_state_dim", "num_steps", "n_cameras",
                  "tokenizer_max_length")
        v, e = self.vlm, self.expert
        for name in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(v, name) != getattr(e, name):
                raise ValueError(f"the expert shares attention with the VLM, so {name} must match: "
                                 f"vlm {getattr(v, name)} vs expert {getattr(e, name)}")
        if e.width % 2:
            raise ValueError(f"the sinusoidal time embedding needs an even expert width, got {e.width}")
        if not 0 < self.min_period < self.max_period:
            raise ValueError(f"need 0 < min_period < max_period, got {self.min_period}, {self.max_period}")

    @property
    def family(self) -> str:
        return "pi05" if self.pi05 else "pi0"

    @property
    def prefix_len(self) -> int:
        return self.n_cameras * self.vision.num_patches + self.tokenizer_max_length

    @property
    def suffix_len(self) -> int:
        return self.chunk_size + (0 if self.pi05 else 1)


def published_args(family: str) -> Pi0Args:
    """The published shape of ``pi0`` or ``pi05`` (LeRobot's default configs)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return Pi0Args() if family == "pi05" else Pi0Args(pi05=False, tokenizer_max_length=48)


def tiny_args(family: str = "pi05", **overrides) -> Pi0Args:
    """A few-kilobyte model of the same structure, for tests and the tiny checkpoint."""
    base = published_args(family)
    gemma = dict(depth=2, num_heads=2, num_kv_heads=1, head_dim=8)
    small = dict(
        vision=SiglipArgs(image_size=28, patch_size=14, width=16, depth=2, num_heads=2, mlp_dim=24),
        vlm=GemmaArgs(width=32, mlp_dim=48, **gemma), expert=GemmaArgs(width=16, mlp_dim=24, **gemma),
        vocab_size=512, chunk_size=4, max_action_dim=8, max_state_dim=8, n_cameras=2, tokenizer_max_length=12,
    )
    return replace(base, **{**small, **overrides})
