"""Training settings and the small OpenVLA-OFT shapes of the Meta-World reference policy.

The model is :class:`~vla_adp.model.openvla_oft.OpenVLAOFT` itself — fused DINOv2 + SigLIP timm
towers, fused GELU projector, bidirectional Llama decoder, proprio projector and L1 MLP-ResNet head —
scaled down so that behaviour cloning fits an hour on two CPU cores. Tower widths are multiples of
the named timm model's head size (DINOv2 64, SigLIP 72) and depth is >= 2 because the loader derives
the geometry from weight shapes (:func:`vla_adp.model.checkpoint.derive_tower`) and features come from
block ``depth - 2`` (the last block is stored, as in the published checkpoints, but never run).
"""

from __future__ import annotations

from dataclasses import dataclass

from vla_adp.constants import Platform
from vla_adp.model.config import LlamaArgs, OFTArgs, VisionTowerArgs

DINO_ID, SIGLIP_ID = "vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"
PRECISIONS = ("fp32", "bf16")
IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass(frozen=True)
class ModelSize:
    """Shapes of the small model (defaults: 112 px, patch 14 -> 64 tokens per view, 128 visual).

    Args:
        patch: ViT patch side; ``image_size / patch`` squared tokens per view.
        dino_width / siglip_width: tower widths (multiples of 64 / 72: one head per 64 / 72).
        tower_depth: blocks per tower (``depth - 1`` of them run).
        tower_mlp_ratio: tower MLP width over tower width.
        llm_dim / llm_layers / llm_heads / llm_ffn: decoder shapes.
    """

    patch: int = 14
    dino_width: int = 64
    siglip_width: int = 72
    tower_depth: int = 3
    tower_mlp_ratio: int = 4
    llm_dim: int = 160
    llm_layers: int = 4
    llm_heads: int = 4
    llm_ffn: int = 432

    def __post_init__(self) -> None:
        if self.dino_width % 64 or self.siglip_width % 72:
            raise ValueError(f"tower widths must be multiples of the timm head sizes (DINOv2 64, SigLIP 72), "
                             f"got dino_width={self.dino_width!r}, siglip_width={self.siglip_width!r}")
        if self.tower_depth < 2:
            raise ValueError(f"tower_depth must be >= 2 (features come from block depth-2), got {self.tower_depth!r}")

    def args(self, vocab: int, platform: Platform, image_size: int) -> OFTArgs:
        """OFTArgs for a tokenizer of ``vocab`` pieces (+ <PAD>, padded to a multiple of 64 as OpenVLA)."""
        depth, r = self.tower_depth, self.tower_mlp_ratio
        dino = VisionTowerArgs(DINO_ID, image_size, self.patch, self.dino_width, depth, self.dino_width // 64,
                               r * self.dino_width, reg_tokens=4, class_token=True, layer_scale=True, **IMAGENET)
        siglip = VisionTowerArgs(SIGLIP_ID, image_size, self.patch, self.siglip_width, depth,
                                 self.siglip_width // 72, r * self.siglip_width)
        padded = -(-(vocab + 1) // 64) * 64
        llm = LlamaArgs(dim=self.llm_dim, n_layers=self.llm_layers, n_heads=self.llm_heads,
                        n_kv_heads=self.llm_heads, ffn_dim=self.llm_ffn, vocab_size=padded)
        vision = self.dino_width + self.siglip_width
        return OFTArgs(towers=(dino, siglip), llm=llm, projector_hidden=(4 * vision, self.llm_dim),
                       proprio_dim=platform.proprio_dim, action_dim=platform.action_dim, chunk=platform.chunk,
                       head_hidden=self.llm_dim, n_images=2)


@dataclass(frozen=True)
class TrainConfig:
    """Behaviour cloning settings.

    Args:
        data: dataset folder written by ``vla-adp collect metaworld|libero`` (its ``meta.json`` names the
            simulator, hence the platform).
        out: checkpoint folder (published layout); the training state goes to ``out/training/``.
        tasks: train on these tasks only (default: every task in ``data``).
        minutes: wall-clock budget of the whole run, resumes included.
        steps: length of the cosine schedule; the schedule follows whichever of step or time
            budget is further along, so the learning rate has annealed when the budget ends.
        batch_size / lr / weight_decay / warmup_steps / grad_clip: AdamW + linear warm-up + cosine.
        threads: torch CPU threads; ``None``: the faster of 1 and 2, re-measured every 200 steps
            (:class:`~vla_adp.train.threads.ThreadTuner`).
        save_minutes: save the training state and the checkpoint this often.
        seed: initialisation and batch sampling.
        model: the small OFT shapes.
        init: a checkpoint (published layout) to start from instead of random weights: its weights and
            tokenizer (e.g. the vision-language stage's output, ``vla-adp train --stage vl``); its
            shapes must be ``model``'s; statistics are computed from ``data`` as always.
        precision: ``fp32``, or ``bf16``: the forward pass under CPU autocast to bfloat16 (weights,
            optimiser and loss stay fp32; about twice as fast on CPUs with AVX512-BF16 or AMX).
        crop_area: train on random square crops of this share of the image area, resized back
            (OFT's LIBERO augmentation, 0.9; :mod:`vla_adp.train.augment`); the checkpoint then
            records ``center_crop`` so evaluation feeds the center crop. ``None``: no augmentation.
    """

    data: str
    out: str
    tasks: tuple[str, ...] | None = None
    minutes: float = 55.0
    steps: int = 20_000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    threads: int | None = None
    save_minutes: float = 5.0
    log_every: int = 25
    seed: int = 0
    model: ModelSize = ModelSize()
    precision: str = "fp32"
    init: str | None = None
    crop_area: float | None = None

    @property
    def thread_choices(self) -> tuple[int, ...]:
        return (self.threads,) if self.threads else (1, 2)

    def __post_init__(self) -> None:
        if self.tasks is not None:
            from vla_adp.envs.metaworld import task_name

            canon = [t if t.startswith("libero") else task_name(t) for t in self.tasks]
            object.__setattr__(self, "tasks", tuple(canon))
        for name in ("minutes", "lr", "save_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.crop_area is not None and not 0.0 < self.crop_area < 1.0:
            raise ValueError(f"TrainConfig.crop_area must be in (0, 1) or None, got {self.crop_area!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"TrainConfig.threads must be a positive int or None (auto), got {self.threads!r}")
        for name in ("steps", "batch_size", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.steps:
            raise ValueError(f"TrainConfig.warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps!r}")
