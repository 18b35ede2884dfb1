"""Behaviour cloning of the small OpenVLA-OFT on scripted-expert demonstrations.

    demos ─► BatchBuilder (= Policy.inputs per sample) ─► [random crops] ─► OpenVLAOFT ─► L1 to the
           next 8 actions
           AdamW, linear warm-up, cosine to min_lr; progress = max(step / steps, time / budget)

The run is resumable: ``out/training/state.pt`` holds the model, the optimizer, the step, the
elapsed seconds and every RNG, saved every ``save_minutes`` and at the end, together with the
checkpoint in the published OFT layout (``save_checkpoint``), so ``Policy.load(out)`` works at any
save. ``out/training/log.jsonl`` records loss, learning rate and throughput.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch

from vla_adp.constants import get_platform
from vla_adp.model.checkpoint import save_checkpoint
from vla_adp.model.openvla_oft import OpenVLAOFT
from vla_adp.model.tokenizer import PromptTokenizer
from vla_adp.train.augment import random_crops
from vla_adp.train.config import TrainConfig
from vla_adp.train.dataset import BatchBuilder, load_demos, norm_stats
from vla_adp.train.run_state import (TOKENIZER_FILE, RunState, descend, lr_at, progress, read_state, restore_state,
                                     run_loop, run_tokenizer)
from vla_adp.train.run_state import save_state as write_state
from vla_adp.train.threads import ThreadTuner

DATASET_KEYS = {"metaworld": "metaworld", "libero": "libero_reference"}  # dataset_statistics.json key per simulator
STATE_FILE = "training/state.pt"
LOG_FILE = "training/log.jsonl"


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the normalised chunk (OFT's L1 regression objective)."""
    return (pred.float() - target).abs().mean()


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
        source = None
        if self.cfg.init:  # the starting checkpoint's pieces: its embeddings and lm_head index them
            source = Path(self.cfg.init) / "tokenizer.model"
            if not source.is_file() and not (resume and (self.out / TOKENIZER_FILE).is_file()):
                raise FileNotFoundError(f"--init {self.cfg.init}: no tokenizer.model (expected a checkpoint folder "
                                        "in the published layout)")
        return run_tokenizer(self.out, resume, source=source, text=tuple(sorted(set(self.demos.instructions))))

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
        write_state(self.out / STATE_FILE, self.model, self.opt, self.state, _jsonable(self.cfg), self.rng)

    def load_state(self) -> None:
        path = self.out / STATE_FILE
        payload = read_state(path, "training state", ("model", "opt", "run", "config", "rng"))
        ours = _jsonable(self.cfg)
        for key, flags in (("model", "--patch / --llm-*"), ("crop_area", "add or drop --crop")):  # what is trained
            if payload["config"].get(key) != ours[key]:
                raise ValueError(f"--resume: {path} was trained with {key} {payload['config'].get(key)!r}, "
                                 f"not {ours[key]!r} ({flags} to match)")
        self.state = restore_state(payload, self.model, self.opt, self.rng)

    def save_checkpoint(self) -> Path:
        hints = None
        if self.sim == "libero":  # evaluation renders as the demonstrations were rendered
            collected = self.meta.get("config", {})
            hints = {"render": collected.get("render", "fast"), "camera_size": self.demos.image_size}
        return save_checkpoint(self.model, self.out, self.stats, self.tokenizer_file, step=self.state.step,
                               platform=self.platform, center_crop=self.cfg.crop_area is not None,
                               dtype=torch.bfloat16, hints=hints)

    # -- loop ------------------------------------------------------------------------------
    def progress_at(self) -> float:
        return progress(self.state, self.cfg)

    def train_step(self) -> float:
        cfg, st = self.cfg, self.state
        inputs, target = self.batches(self.rng.integers(0, len(self.demos), cfg.batch_size))
        if cfg.crop_area is not None:
            inputs.pixels = random_crops(inputs.pixels, self.model.args.n_images, cfg.crop_area, self.rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            predicted = self.model(inputs).actions
        loss = l1_loss(predicted.float(), target)
        descend(self.model, self.opt, loss, lr_at(self.progress_at(), cfg, st.step), cfg.grad_clip)
        st.step += 1
        st.samples += cfg.batch_size
        return loss.item()

    def tuned_step(self) -> float:
        """:meth:`train_step` on the thread count the tuner picks for it, timed for the tuner."""
        step, t0 = self.state.step, time.perf_counter()
        self.threads.threads_for(step)
        loss = self.train_step()
        self.threads.record(step, time.perf_counter() - t0)
        return loss

    def run(self) -> dict[str, Any]:
        """Train until ``steps`` or the time budget, saving on the way; returns :meth:`summary`."""
        self.model.train()
        run_loop(self.state, self.cfg, step=self.tuned_step, log=self._log, save=self._save, at=self.progress_at,
                 desc="train", show=self.progress)
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

