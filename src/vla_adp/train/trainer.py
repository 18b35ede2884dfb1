"""Behaviour cloning of the small OpenVLA-OFT on scripted-expert demonstrations.

    demos ─► BatchBuilder (= Policy.inputs per sample) ─► OpenVLAOFT ─► L1 to the next 8 actions
           AdamW, linear warm-up, cosine to min_lr; progress = max(step / steps, time / budget)

The run is resumable: ``out/training/state.pt`` holds the model, the optimizer, the step, the
elapsed seconds and every RNG, saved every ``save_minutes`` and at the end, together with the
checkpoint in the published OFT layout (``save_checkpoint``), so ``Policy.load(out)`` works at any
save. ``out/training/log.jsonl`` records loss, learning rate and throughput.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from vla_adp.constants import get_platform
from vla_adp.model.checkpoint import save_checkpoint
from vla_adp.model.openvla_oft import OpenVLAOFT
from vla_adp.model.tiny import train_tokenizer
from vla_adp.model.tokenizer import PromptTokenizer
from vla_adp.train.config import TrainConfig
from vla_adp.train.dataset import BatchBuilder, load_demos, norm_stats
from vla_adp.train.threads import ThreadTuner

DATASET_KEYS = {"metaworld": "metaworld", "libero": "libero_reference"}  # dataset_statistics.json key per simulator
STATE_FILE = "training/state.pt"
LOG_FILE = "training/log.jsonl"


def lr_at(progress: float, cfg, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr_ratio·lr`` at progress 1
    (``cfg``: any config with ``lr``, ``warmup_steps``, ``min_lr_ratio``: behaviour cloning, LightVLA)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the normalised chunk (OFT's L1 regression objective)."""
    return (pred.float() - target).abs().mean()


@dataclass
class RunState:
    step: int = 0
    seconds: float = 0.0  # training wall time over all resumes
    samples: int = 0
    losses: list[float] = field(default_factory=list)


class Trainer:
    """One behaviour-cloning run; ``run()`` trains until the step or time budget and saves."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        self.threads = ThreadTuner(cfg.thread_choices)
        torch.set_num_threads(cfg.thread_choices[0])
        self.meta = dataset_meta(cfg.data)
        self.sim = self.meta.get("sim", "metaworld")
        self.platform = get_platform(self.sim)
        self.dataset_key = DATASET_KEYS[self.sim]
        rendered = self.meta.get("images") == "rendered"
        size = self.meta.get("config", {}).get("image_size")
        self.demos = load_demos(cfg.data, cfg.tasks, image_size=size if rendered else None)
        self.tokenizer_file = self._tokenizer(resume)
        vocab = spm.SentencePieceProcessor(model_file=str(self.tokenizer_file)).get_piece_size()
        self.stats = norm_stats(self.demos, self.dataset_key)
        torch.manual_seed(cfg.seed)
        self.model = OpenVLAOFT(cfg.model.args(vocab, self.platform, self.demos.image_size))
        if cfg.init and not resume:
            self._load_init()
        self.batches = BatchBuilder(self.demos, PromptTokenizer(self.tokenizer_file), self.stats[self.dataset_key],
                                    self.model.args.towers, self.platform.chunk)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.state = RunState()
        if resume:
            self.load_state()

    def _tokenizer(self, resume: bool) -> Path:
        path = self.out / "training" / "tokenizer.model"
        if resume and path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.cfg.init:  # the starting checkpoint's pieces: its embeddings and lm_head index them
            source = Path(self.cfg.init) / "tokenizer.model"
            if not source.is_file():
                raise FileNotFoundError(f"--init {self.cfg.init}: no tokenizer.model (expected a checkpoint folder "
                                        "in the published layout)")
            path.write_bytes(source.read_bytes())
            return path
        return train_tokenizer(path, extra_text=tuple(sorted(set(self.demos.instructions))))

    def _load_init(self) -> None:
        """Start from ``cfg.init``'s weights (every module, the action head too where it has one)."""
        from vla_adp.model.checkpoint import load_checkpoint

        init = load_checkpoint(self.cfg.init, dtype=torch.float32, require_action_head=False)
        theirs, ours = init.model.state_dict(), self.model.state_dict()
        bad = sorted(k for k in ours if k in theirs and theirs[k].shape != ours[k].shape)
        if bad:
            raise ValueError(f"--init {self.cfg.init}: its shapes differ from the model of --patch/--llm-* and the "
                             f"data's image size at {bad[:3]} (e.g. {tuple(theirs[bad[0]].shape)} vs "
                             f"{tuple(ours[bad[0]].shape)})")
        missing = sorted(k for k in ours if k not in theirs and not k.startswith(("action_head.", "proprio_projector.")))
        if missing:
            raise ValueError(f"--init {self.cfg.init}: the checkpoint lacks {missing[:3]}")
        self.model.load_state_dict({**ours, **{k: v for k, v in theirs.items() if k in ours}})

    # -- state -----------------------------------------------------------------------------
    def save_state(self) -> None:
        payload = {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "run": asdict(self.state),
                   "config": _jsonable(self.cfg), "rng": {"numpy": self.rng.bit_generator.state,
                                                          "torch": torch.get_rng_state(), "python": random.getstate()}}
        path = self.out / STATE_FILE
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)

    def load_state(self) -> None:
        path = self.out / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no training state at {path}")
        try:  # weights_only: tensors, numbers, strings and containers; nothing in the file can run code
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            lines = str(e).strip().splitlines()
            raise ValueError(f"--resume: {path} cannot be read safely ({type(e).__name__}: "
                             f"{lines[0][:200] if lines else ''})") from None
        if not isinstance(payload, dict) or not {"model", "opt", "run", "config", "rng"} <= set(payload):
            raise ValueError(f"--resume: {path} is not a training state (expected a dict with model, opt, run, "
                             "config and rng)")
        if payload["config"]["model"] != _jsonable(self.cfg)["model"]:
            raise ValueError(f"--resume: {path} was trained with model {payload['config']['model']}, "
                             f"not {_jsonable(self.cfg)['model']}")
        self.model.load_state_dict(payload["model"])
        self.opt.load_state_dict(payload["opt"])
        self.state = RunState(**payload["run"])
        self.rng.bit_generator.state = payload["rng"]["numpy"]
        torch.set_rng_state(payload["rng"]["torch"])
        random.setstate(payload["rng"]["python"])

    def save_checkpoint(self) -> Path:
        hints = None
        if self.sim == "libero":  # evaluation renders as the demonstrations were rendered
            collected = self.meta.get("config", {})
            hints = {"render": collected.get("render", "fast"), "camera_size": self.demos.image_size}
        return save_checkpoint(self.model, self.out, self.stats, self.tokenizer_file, step=self.state.step,
                               platform=self.platform, center_crop=False, dtype=torch.bfloat16, hints=hints)

    # -- loop ------------------------------------------------------------------------------
    def progress_at(self) -> float:
        return max(self.state.step / self.cfg.steps, self.state.seconds / (60 * self.cfg.minutes))

    def train_step(self) -> float:
        cfg, st = self.cfg, self.state
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.progress_at(), cfg, st.step)
        inputs, target = self.batches(self.rng.integers(0, len(self.demos), cfg.batch_size))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            predicted = self.model(inputs).actions
        loss = l1_loss(predicted.float(), target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        st.step += 1
        st.samples += cfg.batch_size
        return loss.item()

    def run(self) -> dict[str, Any]:
        """Train until ``steps`` or the time budget, saving on the way; returns :meth:`summary`."""
        from tqdm import tqdm

        cfg, st = self.cfg, self.state
        self.model.train()
        # The bar runs over the schedule's progress (steps or time, whichever is ahead), in per mille.
        bar = tqdm(total=1000, initial=int(1000 * self.progress_at()), desc="train", unit="‰",
                   bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}", disable=not self.progress)
        start, base = time.perf_counter(), st.seconds  # the budget counts saves and logs too
        last_save, window = start, []
        while self.progress_at() < 1.0:
            step, t0 = st.step, time.perf_counter()
            self.threads.threads_for(step)
            window.append(self.train_step())
            self.threads.record(step, time.perf_counter() - t0)
            st.seconds = base + time.perf_counter() - start
            bar.update(min(1000, int(1000 * self.progress_at())) - bar.n)
            if st.step % cfg.log_every == 0:
                self._log(window, bar)
                window = []
            if time.perf_counter() - last_save > 60 * cfg.save_minutes:
                self._save()
                last_save = time.perf_counter()
        if window:
            self._log(window, bar)
        bar.close()
        self._save()
        return self.summary()

    def _log(self, window: list[float], bar) -> None:
        loss = float(np.mean(window))
        self.state.losses.append(loss)
        rate = self.state.samples / max(self.state.seconds, 1e-9)
        bar.set_postfix(step=self.state.step, loss=f"{loss:.4f}", lr=f"{self.opt.param_groups[0]['lr']:.1e}", sps=f"{rate:.1f}")
        line = {"step": self.state.step, "loss": loss, "lr": self.opt.param_groups[0]["lr"],
                "seconds": round(self.state.seconds, 1), "samples_per_s": round(rate, 2), "threads": torch.get_num_threads()}
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")

    def _save(self) -> None:
        self.save_state()
        self.save_checkpoint()
        (self.out / "training_summary.json").write_text(json.dumps(self.summary(), indent=2))

    def summary(self) -> dict[str, Any]:
        st, d = self.state, self.demos
        return {"steps": st.step, "samples": st.samples, "seconds": round(st.seconds, 1),
                "samples_per_s": round(st.samples / max(st.seconds, 1e-9), 2),
                "final_loss": st.losses[-1] if st.losses else None, "frames": len(d),
                "episodes": len(d.instructions), "tasks": sorted(set(d.tasks)), "threads": list(self.cfg.thread_choices),
                "parameters": sum(p.numel() for p in self.model.parameters()), "config": _jsonable(self.cfg)}


def dataset_meta(data: str | Path) -> dict:
    """``meta.json`` of a collected dataset (``{}`` for a folder without one: Meta-World)."""
    path = Path(data) / "meta.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("sim", "metaworld") not in DATASET_KEYS:
        raise ValueError(f"{path}: 'sim' must be one of {sorted(DATASET_KEYS)}, got {meta.get('sim') if isinstance(meta, dict) else meta!r}")
    return meta


def _jsonable(cfg: TrainConfig) -> dict:
    out = asdict(cfg)
    out["tasks"] = list(cfg.tasks) if cfg.tasks else None
    return out

