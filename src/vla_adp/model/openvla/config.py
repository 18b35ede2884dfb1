"""Model shapes of OpenVLA (Kim et al., 2024; ``openvla/openvla-7b``): Prismatic VLM, no action head.

The vision towers and the Llama-2 decoder reuse OpenVLA-OFT's argument types
(:class:`~vla_adp.model.config.VisionTowerArgs`, :class:`~vla_adp.model.config.LlamaArgs`); what is
OpenVLA's own is the action vocabulary: the last ``n_action_bins`` ids of the *unpadded* vocabulary
(``text_config.vocab_size - pad_to_multiple_of`` = 32000 for Llama-2) are the action bins
(``prismatic/vla/action_tokenizer.py``). The action width is not part of the model: upstream reads
it from the statistics of the chosen dataset (``get_action_dim``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vla_adp.model.config import LlamaArgs, VisionTowerArgs, openvla_7b_args as oft_7b_args


@dataclass(frozen=True)
class OpenVLAArgs:
    """Everything needed to build :class:`~vla_adp.model.openvla.openvla.OpenVLA`.

    Args:
        towers: one tower, or the fused DINOv2 + SigLIP pair (channel order).
        llm: Llama-2 decoder shapes (run causally).
        projector_hidden: hidden widths of the projector (fused: ``(4·vision_dim, llm_dim)``).
        n_images: images per query (1 for every published OpenVLA checkpoint).
        pad_to_multiple_of: embedding rows added after the tokenizer's vocabulary.
        n_action_bins: ``linspace(-1, 1, n_action_bins)`` bin edges (256).
    """

    towers: tuple[VisionTowerArgs, ...]
    llm: LlamaArgs = field(default_factory=LlamaArgs)
    projector_hidden: tuple[int, ...] = (8704, 4096)
    n_images: int = 1
    pad_to_multiple_of: int = 64
    n_action_bins: int = 256

    def __post_init__(self) -> None:
        if len(self.towers) not in (1, 2):
            raise ValueError(f"OpenVLAArgs: expected 1 or 2 vision towers, got {len(self.towers)}")
        if len({t.n_patches for t in self.towers}) != 1:
            raise ValueError(f"OpenVLAArgs: vision towers disagree on patch count {[t.n_patches for t in self.towers]}")
        for name in ("n_images", "n_action_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OpenVLAArgs.{name} must be a positive int, got {value!r}")
        if isinstance(self.pad_to_multiple_of, bool) or not isinstance(self.pad_to_multiple_of, int) \
                or self.pad_to_multiple_of < 0:
            raise ValueError(f"OpenVLAArgs.pad_to_multiple_of must be an int >= 0, got {self.pad_to_multiple_of!r}")
        if self.n_real_vocab <= self.n_action_bins:
            raise ValueError(f"OpenVLAArgs: vocabulary {self.llm.vocab_size} - padding {self.pad_to_multiple_of} = "
                             f"{self.n_real_vocab} ids cannot hold {self.n_action_bins} action bins and the text")

    @property
    def use_proprio(self) -> bool:
        """OpenVLA has no proprio token (the state only reaches a pruner's gate)."""
        return False

    @property
    def n_real_vocab(self) -> int:
        """Ids the tokenizer knows; the action bins are the last ``n_action_bins`` of them."""
        return self.llm.vocab_size - self.pad_to_multiple_of

    @property
    def vision_dim(self) -> int:
        return sum(t.width for t in self.towers)

    @property
    def patches_per_image(self) -> int:
        return self.towers[0].n_patches

    @property
    def image_size(self) -> int:
        return self.towers[0].image_size


def openvla_7b_args() -> OpenVLAArgs:
    """``openvla/openvla-7b``: DINOv2 ViT-L/14-reg + SigLIP So400m/14 at 224 px, Llama-2 7B, one image."""
    oft = oft_7b_args(n_images=1)
    return OpenVLAArgs(towers=oft.towers, llm=oft.llm, projector_hidden=oft.projector_hidden)
