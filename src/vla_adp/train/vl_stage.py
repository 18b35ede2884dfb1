"""The vision-language stage: the policy's decoder learns to say what is where, before (or between) action training.

OpenVLA starts from a Prismatic VLM whose projector and decoder were trained on image-text data;
the small LIBERO reference policy never was. This stage trains the same model on scene text from
the simulator (:mod:`vla_adp.train.vl_data`):

    both views ─► towers ─► projector ──┐
    BOS + prompt + '▁' ─► embeddings ───┼─► [BOS | visual | proprio | prompt | 56 slots | </s>]
    (the policy's instruction prompt,   │         bidirectional Llama decoder (the policy's own)
     or "In: {question}?\\nOut:")        ▼
                      hidden rows the action head reads (OFTOutput.hidden: '▁' and the slots)
                                         │ lm_head
                                         ▼
             cross-entropy to  answer tokens + </s>  (row i predicts answer token i)

The answer is decoded in parallel from the rows the L1 action head reads, as OFT's discrete
variant decodes action tokens with ``lm_head`` from the same rows; a causal next-token objective is
not used because the policy's decoder runs without a causal mask (a mask the policy never runs
with would train other attention than the one ADP scores). Row ``i`` of that slice sits one
position before slot ``i``, so answer token ``i`` is predicted from the position the reference's
next-token layout would predict it from. Every weight trains except the action head and the
proprio projector, which get no gradient (towers included, as behaviour cloning trains them).

Start: ``init`` (a checkpoint in the published layout: its weights, tokenizer and statistics are
kept, so the result is again a loadable policy), or a fresh model of ``model``'s shapes with a
tokenizer trained on the instructions and the scene text; a fresh model's checkpoint records
identity action statistics (no action was trained; ``vla-adp train --init`` recomputes them from
its demonstrations). The run saves ``out/training/vl_state.pt`` for ``resume`` and the checkpoint
in the published layout at every save.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F

from vla_adp.constants import BOS_ID, STOP_ID, get_platform
from vla_adp.model import transforms as T
from vla_adp.model.checkpoint import load_checkpoint, save_checkpoint
from vla_adp.model.openvla_oft import OFTInputs, OpenVLAOFT
from vla_adp.model.tokenizer import PromptTokenizer
from vla_adp.train.config import PRECISIONS, ModelSize
from vla_adp.train.run_state import RunState, descend, lr_at, progress, read_state, restore_state, run_loop, run_tokenizer
from vla_adp.train.run_state import save_state as write_state
from vla_adp.train.vl_data import load_vl

QUESTION_TEMPLATE = "In: {question}?\nOut:"
STATE_FILE = "training/vl_state.pt"
LOG_FILE = "training/vl_log.jsonl"
DATASET_KEY = "libero_reference"
IGNORE = -100


@dataclass(frozen=True)
class VLTrainConfig:
    """Vision-language stage settings.

    Args:
        data: scene-text folder from ``vla-adp collect libero-vl``.
        out: checkpoint folder (published layout); the training state goes to ``out/training/``.
        init: checkpoint to start from (``None``: a fresh model of ``model``'s shapes).
        minutes / steps: budget; the schedule follows whichever is further along.
        batch_size / lr / min_lr_ratio / weight_decay / warmup_steps / grad_clip: AdamW + linear warm-up
            + cosine.
        instruction_share: share of each batch drawn from the ``instruction`` form (the policy's own
            prompt naming an object → its location); the rest from the other forms, each equally.
        holdout_every: frames whose placement index is a multiple of this are held out (accuracy).
        eval_pairs: held-out pairs per form scored at the end (evenly spaced; 0: no scoring).
        threads / save_minutes / log_every / seed / precision: as behaviour cloning.
        model: shapes of a fresh model (ignored with ``init``).
    """

    data: str
    out: str
    init: str | None = None
    minutes: float = 12.0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    instruction_share: float = 0.5
    holdout_every: int = 10
    eval_pairs: int = 200
    threads: int = 1
    save_minutes: float = 5.0
    log_every: int = 10
    seed: int = 0
    model: ModelSize = ModelSize(patch=16, llm_dim=192, llm_layers=6, llm_heads=4, llm_ffn=512)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name in ("minutes", "lr", "save_minutes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"VLTrainConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("steps", "batch_size", "log_every", "threads", "holdout_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"VLTrainConfig.{name} must be a positive int, got {value!r}")
        if not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"VLTrainConfig.warmup_steps must be in [0, steps={self.steps}), got {self.warmup_steps!r}")
        if not isinstance(self.eval_pairs, int) or self.eval_pairs < 0:
            raise ValueError(f"VLTrainConfig.eval_pairs must be an int >= 0, got {self.eval_pairs!r}")
        if not 0 <= self.instruction_share <= 1:
            raise ValueError(f"VLTrainConfig.instruction_share must be in [0, 1], got {self.instruction_share!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"VLTrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"VLTrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")


def prompt_ids(tokenizer: PromptTokenizer, form: str, prompt: str) -> list[int]:
    """BOS + prompt + '▁': the policy's instruction prompt for ``instruction``, a question otherwise."""
    if form == "instruction":
        return tokenizer.prompt_ids(prompt)
    ids = [BOS_ID, *tokenizer.sp.encode(QUESTION_TEMPLATE.format(question=prompt))]
    return ids if ids[-1] == tokenizer.space_id else ids + [tokenizer.space_id]


def answer_ids(tokenizer: PromptTokenizer, answer: str) -> list[int]:
    return [*tokenizer.sp.encode(answer), STOP_ID]


def identity_stats(state: np.ndarray, action_dim: int) -> dict:
    """Statistics of a checkpoint that has seen no action: actions map to themselves (q01 -1, q99 1,
    gripper unnormalised), proprio from the frames' robot states."""
    from vla_adp.train.dataset import _block

    ones = [1.0] * action_dim
    action = {"mean": [0.0] * action_dim, "std": ones, "max": ones, "min": [-1.0] * action_dim,
              "q01": [-1.0] * action_dim, "q99": ones, "mask": [True] * (action_dim - 1) + [False]}
    return {DATASET_KEY: {"action": action, "proprio": _block(state), "num_transitions": 0, "num_trajectories": 0,
                          "note": "vision-language stage only: no action was trained (identity action statistics)"}}


def text_loss(model: OpenVLAOFT, inputs: OFTInputs, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over answer tokens, (B, n) logits argmax) through ``lm_head`` on the rows
    the action head reads; ``target`` (B, n) holds token ids and ``IGNORE`` past each answer."""
    hidden = model(inputs).hidden  # (B, n_slots, D)
    logits = model.language_model.lm_head(hidden).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE)
    return loss, logits.argmax(-1)


class VLTrainer:
    """One vision-language run; ``run()`` trains until the step or time budget and saves."""

    def __init__(self, cfg: VLTrainConfig, resume: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        (self.out / "training").mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(cfg.threads)
        self.platform = get_platform("libero")
        self.hints: dict[str, Any] = {"render": "fast"}
        if cfg.init:
            ckpt = load_checkpoint(cfg.init, dtype=torch.float32)
            self.model, self.stats = ckpt.model, ckpt.norm_stats
            ours = ckpt.config.get("vla_adp") or {}
            self.hints = {k: ours[k] for k in ("render", "camera_size", "stages") if k in ours} or self.hints
            self.tokenizer_file = run_tokenizer(self.out, resume, source=ckpt.tokenizer_file)
            self.frames = load_vl(cfg.data, self.model.args.towers[0].image_size)
        else:
            meta = json.loads((Path(cfg.data) / "meta.json").read_text()) if (Path(cfg.data) / "meta.json").is_file() else {}
            size = int(meta.get("config", {}).get("image_size", 128))
            self.frames = load_vl(cfg.data, size)
            self.tokenizer_file = self._tokenizer(resume)
            vocab = spm.SentencePieceProcessor(model_file=str(self.tokenizer_file)).get_piece_size()
            torch.manual_seed(cfg.seed)
            self.model = OpenVLAOFT(cfg.model.args(vocab, self.platform, size))
            self.stats = identity_stats(self.frames.state, self.platform.action_dim)
            self.hints["camera_size"] = size
        self.unnorm_key = next(iter(self.stats))
        self.tokenizer = PromptTokenizer(self.tokenizer_file)
        self.n_slots = self.model.args.n_action_slots
        self.train_idx, self.held_idx = self._split()
        self._by_form: dict[str, list[tuple[int, int]]] = {}
        for f, j in self.train_idx:
            self._by_form.setdefault(self.frames.pairs[f][j][0], []).append((f, j))
        self.opt = torch.optim.AdamW([p for n, p in self.model.named_parameters()
                                      if not n.startswith(("action_head.", "proprio_projector."))],
                                     lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.state = RunState()
        if resume:
            self.load_state()

    def _tokenizer(self, resume: bool) -> Path:
        text = sorted({s for pairs in self.frames.pairs for _, p, a in pairs for s in (p, a)}
                      | set(self.frames.instructions))
        return run_tokenizer(self.out, resume, text=tuple(text), vocab_size=600)

    def _split(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(frame, pair) indices for training and for the held-out placements."""
        from vla_adp.envs.libero import SAMPLED_SEED_BASE
        from vla_adp.train.vl_data import VL_EPISODE_BASE

        train, held = [], []
        for f, pairs in enumerate(self.frames.pairs):
            held_out = (self.frames.seeds[f] - SAMPLED_SEED_BASE - VL_EPISODE_BASE) % self.cfg.holdout_every == 0
            (held if held_out else train).extend((f, j) for j in range(len(pairs)))
        if not train:
            raise ValueError(f"{self.cfg.data}: no training pairs (every frame is held out with "
                             f"holdout_every={self.cfg.holdout_every})")
        return train, held

    # -- batches --------------------------------------------------------------------------
    def batch(self, rows: list[tuple[int, int]]) -> tuple[OFTInputs, torch.Tensor]:
        fr, towers = self.frames, self.model.args.towers
        means, stds = [t.mean for t in towers], [t.std for t in towers]
        pixels = np.stack([np.concatenate([T.normalize_pixels(v[f], means, stds)
                                           for v in (fr.full_image, fr.wrist_image)]) for f, _ in rows])
        prompts, answers = [], []
        for f, j in rows:
            form, prompt, answer = fr.pairs[f][j]
            prompts.append(prompt_ids(self.tokenizer, form, prompt))
            a = answer_ids(self.tokenizer, answer)
            if len(a) > self.n_slots:
                raise ValueError(f"answer {answer!r} is {len(a)} tokens; the model decodes at most {self.n_slots}")
            answers.append(a)
        width = max(map(len, prompts))
        ids = torch.full((len(rows), width), self.tokenizer.space_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        target = torch.full((len(rows), self.n_slots), IGNORE, dtype=torch.long)
        for r, (p, a) in enumerate(zip(prompts, answers)):
            ids[r, : len(p)], mask[r, : len(p)] = torch.tensor(p), True
            target[r, : len(a)] = torch.tensor(a)
        proprio = T.normalize_proprio(fr.state[[f for f, _ in rows]], self.stats[self.unnorm_key]["proprio"])
        inputs = OFTInputs(torch.from_numpy(pixels), ids, torch.from_numpy(proprio.astype(np.float32)), mask)
        return inputs, target

    def sample(self, n: int) -> list[tuple[int, int]]:
        """``n`` training pairs: the ``instruction`` form with probability ``instruction_share``, else
        one of the other forms uniformly (so the many ``relation`` pairs do not crowd out the rest)."""
        forms = self._by_form
        others = sorted(f for f in forms if f != "instruction")
        out = []
        for _ in range(n):
            if "instruction" in forms and (not others or self.rng.random() < self.cfg.instruction_share):
                pool = forms["instruction"]
            else:
                pool = forms[others[int(self.rng.integers(0, len(others)))]]
            out.append(pool[int(self.rng.integers(0, len(pool)))])
        return out

    # -- state ----------------------------------------------------------------------------
    def save_state(self) -> None:
        write_state(self.out / STATE_FILE, self.model, self.opt, self.state, _jsonable(self.cfg), self.rng)

    def load_state(self) -> None:
        payload = read_state(self.out / STATE_FILE, "vision-language training state", ("model", "opt", "run", "rng"),
                             detail=False)
        self.state = restore_state(payload, self.model, self.opt, self.rng)

    def save_checkpoint(self) -> Path:
        stages = list(self.hints.get("stages", []))
        hints = {**self.hints, "stages": stages if stages[-1:] == ["vl"] else [*stages, "vl"]}
        return save_checkpoint(self.model, self.out, self.stats, self.tokenizer_file, step=self.state.step,
                               platform=self.platform, center_crop=False, dtype=torch.bfloat16, hints=hints)

    # -- loop -----------------------------------------------------------------------------
    def progress_at(self) -> float:
        return progress(self.state, self.cfg)

    def train_step(self) -> float:
        cfg, st = self.cfg, self.state
        inputs, target = self.batch(self.sample(cfg.batch_size))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
            loss, _ = text_loss(self.model, inputs, target)
        descend(self.model, self.opt, loss, lr_at(self.progress_at(), cfg, st.step), cfg.grad_clip)
        st.step += 1
        st.samples += cfg.batch_size
        return float(loss.detach())

    @torch.no_grad()
    def accuracy(self, rows: list[tuple[int, int]] | None = None, batch: int = 64) -> dict[str, dict[str, float]]:
        """Per form: answers decoded exactly (every token, </s> included), token accuracy, and the
        exact-match rate of always answering the form's most common training answer (``majority``:
        the bar a model that ignores the image clears), on ``rows`` (default: up to ``eval_pairs``
        per form of the held-out placements, evenly spaced)."""
        rows = self.held_out_sample() if rows is None else rows
        was = self.model.training
        self.model.eval()
        tally: dict[str, list[int]] = {}
        for s in range(0, len(rows), batch):
            chunk = rows[s: s + batch]
            inputs, target = self.batch(chunk)
            _, pred = text_loss(self.model, inputs, target)
            valid = target != IGNORE
            hit = (pred == target) & valid
            for r, (f, j) in enumerate(chunk):
                t = tally.setdefault(self.frames.pairs[f][j][0], [0, 0, 0, 0])
                t[0] += int(hit[r].sum() == valid[r].sum())
                t[1] += 1
                t[2] += int(hit[r].sum())
                t[3] += int(valid[r].sum())
        self.model.train(was)
        majority = self.majority_answers()
        hits: dict[str, int] = {}
        for f, j in rows:
            form, _, answer = self.frames.pairs[f][j]
            hits[form] = hits.get(form, 0) + int(answer == majority.get(form))
        return {k: {"exact": v[0] / v[1], "token": v[2] / max(1, v[3]), "majority": hits[k] / v[1], "n": v[1]}
                for k, v in sorted(tally.items())}

    def majority_answers(self) -> dict[str, str]:
        """The most common training answer of each form (ties: the first in sorted order)."""
        counts: dict[str, dict[str, int]] = {}
        for form, rows in self._by_form.items():
            c = counts.setdefault(form, {})
            for f, j in rows:
                a = self.frames.pairs[f][j][2]
                c[a] = c.get(a, 0) + 1
        return {form: min(c, key=lambda a: (-c[a], a)) for form, c in counts.items()}

    def held_out_sample(self) -> list[tuple[int, int]]:
        by_form: dict[str, list[tuple[int, int]]] = {}
        for f, j in self.held_idx:
            by_form.setdefault(self.frames.pairs[f][j][0], []).append((f, j))
        out = []
        for rows in by_form.values():
            k = min(len(rows), self.cfg.eval_pairs)
            out += [rows[i] for i in np.linspace(0, len(rows) - 1, k).round().astype(int)] if k else []
        return out

    def run(self) -> dict[str, Any]:
        """Train until ``steps`` or the time budget, saving on the way; returns the summary."""
        self.model.train()
        run_loop(self.state, self.cfg, step=self.train_step, log=self._log, save=self._save, at=self.progress_at,
                 desc="vl", show=self.progress)
        return self._save(final=True)

    def _log(self, window: list[float], bar) -> None:
        loss = float(np.mean(window))
        self.state.losses.append(loss)
        lr = self.opt.param_groups[0]["lr"]
        bar.set_postfix(step=self.state.step, loss=f"{loss:.3f}", lr=f"{lr:.1e}")
        with open(self.out / LOG_FILE, "a") as f:
            f.write(json.dumps({"step": self.state.step, "loss": loss, "lr": lr,
                                "seconds": round(self.state.seconds, 1)}) + "\n")

    def _save(self, final: bool = False) -> dict[str, Any]:
        self.save_state()
        self.save_checkpoint()
        summary = self.summary(held_out=self.accuracy() if final and self.held_idx and self.cfg.eval_pairs else None)
        (self.out / "vl_summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def summary(self, held_out: dict | None = None) -> dict[str, Any]:
        st = self.state
        forms: dict[str, int] = {}
        for f, j in self.train_idx:
            forms[self.frames.pairs[f][j][0]] = forms.get(self.frames.pairs[f][j][0], 0) + 1
        return {"stage": "vl", "steps": st.step, "samples": st.samples, "seconds": round(st.seconds, 1),
                "first_loss": st.losses[0] if st.losses else None, "final_loss": st.losses[-1] if st.losses else None,
                "frames": len(self.frames), "train_pairs": len(self.train_idx), "held_out_pairs": len(self.held_idx),
                "pairs_per_form": forms, "held_out_accuracy": held_out,
                "parameters": sum(p.numel() for p in self.model.parameters()), "config": _jsonable(self.cfg)}


def _jsonable(cfg: VLTrainConfig) -> dict:
    return asdict(cfg)

