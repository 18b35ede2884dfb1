"""LightVLA fine-tuning of a trained policy (Jiang et al., arXiv 2509.12594 §3; LiAutoAD/LightVLA).

LightVLA is training-based: its parameter-free selector (:mod:`vla_adp.pruning.pruners.lightvla`)
only keeps meaningful patches after the policy has been fine-tuned *through* the selection. This
module does that for a checkpoint in the published layout (the Meta-World reference policy):

    checkpoint ─► OpenVLAOFT (fp32) ──┐
    demos ─► BatchBuilder ─► inputs ──┴► model(inputs, pruner.train(), hooks {0})
                                          │ S̃ = S + U(0,1)·(1 − progress)     (noise anneals to 0)
                                          │ tokens = (onehot(argmax S̃) + softmax S̃ − sg softmax S̃)·P
                                          ▼
                                 L1 to the next 8 normalised actions ─► AdamW (all weights)

The loss is OFT's L1 on the action chunk, exactly the behaviour-cloning objective of
:mod:`vla_adp.train.trainer` (same batches, same normalisation: the checkpoint's own statistics); the
gradient reaches the projector, the towers and the token embeddings through the selected tokens and,
via the straight-through softmax, through the scores (LightVLA Eq. 4–6). Schedule: linear warm-up,
cosine decay of the learning rate, and the selection noise scale ``1 − progress`` with
``progress = max(step / steps, seconds / budget)`` (the reference anneals the noise linearly over its
training steps; here the time budget may end the run first, and the noise must reach 0 by then so
that the last updates see the deterministic inference selection).

Deviations from the reference: a few thousand steps from a converged behaviour-cloning policy on
two CPU cores instead of 40k steps from an OFT checkpoint on GPUs; the reference fine-tunes with
LoRA, here every weight trains (the model has 2.2 M parameters).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_adp.model.checkpoint import load_checkpoint, resolve_unnorm_key, save_checkpoint
from vla_adp.model.tokenizer import PromptTokenizer
from vla_adp.pruning.pruners.lightvla import LightVLAConfig, LightVLAPruner
from vla_adp.seam.context import Query
from vla_adp.seam.query import run_query
from vla_adp.train.dataset import BatchBuilder, load_demos
from vla_adp.train.run_state import descend, lr_at
from vla_adp.train.trainer import l1_loss

LOG_FILE = "training/lightvla_log.jsonl"
SUMMARY_FILE = "training_summary.json"
PROGRESS_UNITS = 10_000  # set_progress takes integers: progress in 1/10000


@dataclass(frozen=True)
class LightVLATrainConfig:
    """LightVLA fine-tuning settings.

    Args:
        checkpoint: the policy to start from (published layout).
        data: demonstrations written by ``vla-adp collect metaworld``.
        out: output checkpoint folder (published layout, bf16 like the start).
        tasks: fine-tune on these tasks; ``None``: the reference policy's training tasks (suite
            ``metaworld_train``).
        minutes: wall-clock budget of the optimisation loop (loading excluded).
        steps: schedule length; the run ends at ``steps`` or ``minutes``, whichever comes first,
            and the learning rate and selection noise follow the one that is further along.
        batch_size / lr / min_lr_ratio / weight_decay / warmup_steps / grad_clip: AdamW + linear
            warm-up + cosine to ``min_lr_ratio·lr``.
        threads: torch CPU threads.
        log_every: steps per log line.
        seed: batch sampling and the selection noise.
    """

    checkpoint: str
    data: str
    out: str
    tasks: tuple[str, ...] | None = None
    minutes: float = 18.0
    steps: int = 3000
    batch_size: int = 32
    lr: float = 2e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    threads: int = 1
    log_every: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tasks is None:
            from vla_adp.envs.metaworld import TRAIN_TASKS

            object.__setattr__(self, "tasks", TRAIN_TASKS)
        for name in ("minutes", "lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LightVLATrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "threads", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LightVLATrainConfig.{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"LightVLATrainConfig.warmup_steps must be in [0, steps={self.steps}), "
                             f"got {self.warmup_steps!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"LightVLATrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")


def lightvla_loss(model, pruner: LightVLAPruner, inputs, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L1 of one batch run through the training-mode selector; also the pruner's report.

    The pruner's ``end`` gets no actions (LightVLA keeps no temporal state; the chunk still carries
    its gradient).
    """
    r = run_query(model, inputs, pruner, Query(0), actions=lambda _: np.empty((0, 0)))
    return l1_loss(r.output.actions, target), r.report


class LightVLATrainer:
    """Fine-tunes a checkpoint through LightVLA's differentiable selection; ``run()`` trains and saves."""

    def __init__(self, cfg: LightVLATrainConfig, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        torch.set_num_threads(cfg.threads)
        self.ckpt = load_checkpoint(cfg.checkpoint, dtype=torch.float32)
        self.model = self.ckpt.model
        self.unnorm_key = resolve_unnorm_key(self.ckpt.norm_stats, None)
        self.demos = load_demos(cfg.data, cfg.tasks)
        self.batches = BatchBuilder(self.demos, PromptTokenizer(self.ckpt.tokenizer_file),
                                    self.ckpt.norm_stats[self.unnorm_key], self.model.args.towers,
                                    self.ckpt.platform.chunk)
        self.pruner = LightVLAPruner(LightVLAConfig(seed=cfg.seed)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.step, self.seconds, self.losses, self.kept = 0, 0.0, [], []

    def progress_at(self) -> float:
        return max(self.step / self.cfg.steps, self.seconds / (60 * self.cfg.minutes))

    def train_step(self) -> float:
        """One AdamW step through the noisy straight-through selection; returns the batch loss."""
        p = min(1.0, self.progress_at())
        self.pruner.set_progress(int(round(p * PROGRESS_UNITS)), PROGRESS_UNITS)
        inputs, target = self.batches(self.rng.integers(0, len(self.demos), self.cfg.batch_size))
        loss, info = lightvla_loss(self.model, self.pruner, inputs, target)
        descend(self.model, self.opt, loss, lr_at(p, self.cfg, self.step), self.cfg.grad_clip)
        self.step += 1
        self.kept.append(info["keep_ratio_achieved"])
        return float(loss.detach())

    def run(self) -> dict[str, Any]:
        """Train until ``steps`` or ``minutes``; write the checkpoint, the log and the summary."""
        from tqdm import tqdm

        out = Path(self.cfg.out)
        (out / "training").mkdir(parents=True, exist_ok=True)
        self.model.train()
        bar = tqdm(total=1000, desc="lightvla", unit="‰", disable=not self.progress,
                   bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        start, window = time.perf_counter(), []
        while self.progress_at() < 1.0:
            window.append(self.train_step())
            self.seconds = time.perf_counter() - start
            bar.update(min(1000, int(1000 * self.progress_at())) - bar.n)
            if self.step % self.cfg.log_every == 0:
                self._log(window, bar)
                window = []
        if window:
            self._log(window, bar)
        bar.close()
        return self.save()

    def _log(self, window: list[float], bar) -> None:
        loss = float(np.mean(window))
        self.losses.append(loss)
        kept = float(np.mean(self.kept[-len(window):]))
        line = {"step": self.step, "loss": loss, "lr": self.opt.param_groups[0]["lr"], "noise": self.pruner.noise_scale,
                "kept_distinct": kept, "seconds": round(self.seconds, 1)}
        bar.set_postfix(step=self.step, loss=f"{loss:.4f}", kept=f"{kept:.2f}", noise=f"{self.pruner.noise_scale:.2f}")
        with open(Path(self.cfg.out) / LOG_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")

    def save(self) -> dict[str, Any]:
        """The fine-tuned policy in the published layout (bf16) plus ``training_summary.json``."""
        self.model.eval()
        out = Path(self.cfg.out)
        save_checkpoint(self.model, out, self.ckpt.norm_stats,
                        self.ckpt.tokenizer_file, step=self.step, platform=self.ckpt.platform,
                        center_crop=(self.ckpt.config.get("vla_adp") or {}).get("center_crop"), dtype=torch.bfloat16)
        summary = self.summary()
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        return summary

    def summary(self) -> dict[str, Any]:
        cfg = asdict(self.cfg)
        cfg["tasks"] = list(self.cfg.tasks)
        return {"method": "lightvla", "steps": self.step, "seconds": round(self.seconds, 1),
                "samples": self.step * self.cfg.batch_size, "first_loss": self.losses[0] if self.losses else None,
                "final_loss": self.losses[-1] if self.losses else None,
                "final_kept_distinct": float(np.mean(self.kept[-self.cfg.log_every:])) if self.kept else None,
                "frames": len(self.demos), "episodes": len(self.demos.instructions),
                "threads": torch.get_num_threads(), "config": cfg}
