"""What every training run of this package shares: the resumable state, the schedule and the loop.

    state.pt = {model, opt, run (RunState), config, rng (numpy, torch, python)}   written atomically
    progress = max(step / steps, seconds / (60 · minutes))                         the schedule's clock
    lr       = linear warm-up, then cosine from lr to min_lr_ratio · lr at progress 1
    loop     : step ─► log every log_every steps ─► save every save_minutes ─► until progress 1

Behaviour cloning (:mod:`vla_adp.train.trainer`) and the vision-language stage
(:mod:`vla_adp.train.vl_stage`) run on these; each keeps its own model, batches, log line and summary.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from vla_adp.model.checkpoint import first_line

TOKENIZER_FILE = "training/tokenizer.model"
BAR_FORMAT = "{l_bar}{bar}| {elapsed}<{remaining} {postfix}"


@dataclass
class RunState:
    step: int = 0
    seconds: float = 0.0  # training wall time over all resumes
    samples: int = 0
    losses: list[float] = field(default_factory=list)


# -- schedule ------------------------------------------------------------------------------
def progress(state: RunState, cfg) -> float:
    """How far the run is (1: done): steps or time budget, whichever is further along."""
    return max(state.step / cfg.steps, state.seconds / (60 * cfg.minutes))


def lr_at(progress: float, cfg, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr_ratio·lr`` at progress 1
    (``cfg``: any config with ``lr``, ``warmup_steps``, ``min_lr_ratio``: behaviour cloning, LightVLA)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cos)


def descend(model: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
            grad_clip: float) -> None:
    """One optimizer step on ``loss`` at learning rate ``lr``, gradients clipped to norm ``grad_clip``."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()


# -- tokenizer -----------------------------------------------------------------------------
def run_tokenizer(out: Path, resume: bool, *, source: Path | None = None, text: tuple[str, ...] = (),
                  vocab_size: int = 400) -> Path:
    """``out/training/tokenizer.model``: kept on resume, else a copy of ``source`` (a starting
    checkpoint's pieces: its embeddings and lm_head index them), else trained on ``text``."""
    from vla_adp.model.tiny import train_tokenizer

    path = Path(out) / TOKENIZER_FILE
    if resume and path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if source is not None:
        path.write_bytes(Path(source).read_bytes())
        return path
    return train_tokenizer(path, vocab_size=vocab_size, extra_text=text)


# -- training state ------------------------------------------------------------------------
def save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: RunState, config: dict,
               rng: np.random.Generator) -> None:
    """Write the run's state to ``path`` through a temporary file, so a crash never leaves half a file."""
    payload = {"model": model.state_dict(), "opt": opt.state_dict(), "run": asdict(state), "config": config,
               "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()}}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_state(path: Path, what: str, keys: tuple[str, ...], detail: bool = True) -> dict:
    """The payload at ``path``, checked to hold ``keys``; ``what`` names it in the errors (``detail``:
    they also quote the loader's first line and the keys expected)."""
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no {what} at {path}")
    try:  # weights_only: tensors, numbers, strings and containers; nothing in the file can run code
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols; our error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--resume: {path} cannot be read safely "
                         f"({first_line(e) if detail else type(e).__name__})") from None
    if not isinstance(payload, dict) or not set(keys) <= set(payload):
        expected = f" (expected a dict with {', '.join(keys[:-1])} and {keys[-1]})" if detail else ""
        raise ValueError(f"--resume: {path} is not a {what}{expected}")
    return payload


def restore_state(payload: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
                  rng: np.random.Generator) -> RunState:
    """Load ``payload``'s weights, optimizer and RNGs in place; returns its :class:`RunState`."""
    model.load_state_dict(payload["model"])
    opt.load_state_dict(payload["opt"])
    state = RunState(**payload["run"])
    rng.bit_generator.state = payload["rng"]["numpy"]
    torch.set_rng_state(payload["rng"]["torch"])
    random.setstate(payload["rng"]["python"])
    return state


# -- loop ----------------------------------------------------------------------------------
def run_loop(state: RunState, cfg, *, step: Callable[[], float], log: Callable[[list[float], object], None],
             save: Callable[[], object], at: Callable[[], float], desc: str, show: bool) -> None:
    """Call ``step`` until ``at()`` reaches 1, advancing ``state.seconds`` (the budget counts saves and
    logs too); ``log(losses, bar)`` every ``cfg.log_every`` steps and at the end, ``save()`` every
    ``cfg.save_minutes``. The caller saves once more after it. The bar runs over ``at()`` in per mille."""
    from tqdm import tqdm

    bar = tqdm(total=1000, initial=int(1000 * at()), desc=desc, unit="‰", bar_format=BAR_FORMAT, disable=not show)
    start, base = time.perf_counter(), state.seconds
    last_save, window = start, []
    while at() < 1.0:
        window.append(step())
        state.seconds = base + time.perf_counter() - start
        bar.update(min(1000, int(1000 * at())) - bar.n)
        if state.step % cfg.log_every == 0:
            log(window, bar)
            window = []
        if time.perf_counter() - last_save > 60 * cfg.save_minutes:
            save()
            last_save = time.perf_counter()
    if window:
        log(window, bar)
    bar.close()
