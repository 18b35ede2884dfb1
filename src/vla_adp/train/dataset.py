"""Demonstrations in memory, their normalisation statistics, and training batches built like inference.

A batch is exactly what :meth:`vla_adp.policy.Policy.inputs` builds for each sample (pixels via
``normalize_pixels`` per tower, BOS + prompt + '▁' ids, q01/q99-normalised proprio), stacked. Prompts
of different lengths are right-padded with the '▁' id and hidden by ``prompt_mask``: the model numbers
the real tokens 0..L-1, so the last pad — the row the upstream action slice reads first — sees the
same input, position and keys as the real '▁' at inference, and every sample computes exactly what it
would alone (tested).

Targets are the next ``chunk`` expert actions from each frame, q01/q99-normalised and clipped to
[-1, 1] as OFT's RLDS pipeline does; past the end of an episode the last action is repeated (the
reference's future-action window clamps its indices the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vla_adp.model import transforms as T
from vla_adp.model.openvla_oft import OFTInputs
from vla_adp.model.tokenizer import PromptTokenizer
from vla_adp.train.demos import read_shard


@dataclass
class Demos:
    """All frames of a dataset, concatenated episode after episode.

    Args:
        full_image / wrist_image: (N, H, W, 3) uint8.
        state / actions: (N, 4) float32.
        episode: (N,) episode index of each frame; ``ends[e]`` is one past episode e's last frame.
        instructions: (E,) instruction of each episode.
        tasks / seeds: (E,) task name and environment seed of each episode.
    """

    full_image: np.ndarray
    wrist_image: np.ndarray
    state: np.ndarray
    actions: np.ndarray
    episode: np.ndarray
    ends: np.ndarray
    instructions: list[str]
    tasks: list[str]
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def image_size(self) -> int:
        return self.full_image.shape[1]


def shard_files(data_dir: str | Path, tasks: tuple[str, ...] | None = None) -> list[Path]:
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root} (write one with `vla-adp collect metaworld`)")
    files = sorted(p for p in root.glob("*/episode_*.npz") if not p.name.endswith(".tmp.npz"))
    if tasks:
        missing = sorted(set(tasks) - {p.parent.name for p in files})
        if missing:
            found = sorted({p.parent.name for p in files})
            raise ValueError(f"{root}: no demonstrations of {missing}; the dataset has {found}")
        files = [p for p in files if p.parent.name in tasks]
    if not files:
        raise ValueError(f"{root}: no demonstration shards (<task>/episode_*.npz) for tasks {tasks or 'any'}")
    return files


def load_demos(data_dir: str | Path, tasks: tuple[str, ...] | None = None, image_size: int | None = None) -> Demos:
    """Read every shard of ``data_dir`` (optionally only ``tasks``) into one :class:`Demos`.

    ``image_size``: the shards hold images as rendered (LIBERO); pass each through the evaluation's
    image pipeline (:func:`vla_adp.model.transforms.resize_for_policy`: JPEG round trip, resize to
    ``image_size``) while loading, so training sees the pixels evaluation will."""
    shards = [read_shard(p) for p in shard_files(data_dir, tasks)]
    if image_size is not None:
        for d in shards:
            for k in ("full_image", "wrist_image"):
                d[k] = np.stack([T.resize_for_policy(img, image_size) for img in d[k]])
    sizes = {d["full_image"].shape[1:] for d in shards} | {d["wrist_image"].shape[1:] for d in shards}
    if len(sizes) != 1:
        raise ValueError(f"{data_dir}: shards disagree on image shape: {sorted(sizes)}")
    lengths = np.array([len(d["actions"]) for d in shards])
    cat = {k: np.concatenate([d[k] for d in shards]) for k in ("full_image", "wrist_image", "state", "actions")}
    return Demos(**cat, episode=np.repeat(np.arange(len(shards)), lengths), ends=np.cumsum(lengths),
                 instructions=[d["instruction"] for d in shards], tasks=[d["task"] for d in shards],
                 seeds=[d["seed"] for d in shards])


# -- statistics ------------------------------------------------------------------------------
def _block(x: np.ndarray, mask: list[bool] | None = None) -> dict:
    x = x.astype(np.float64)
    out = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "max": x.max(0).tolist(), "min": x.min(0).tolist(),
           "q01": np.quantile(x, 0.01, axis=0).tolist(), "q99": np.quantile(x, 0.99, axis=0).tolist()}
    if mask is not None:
        out["mask"] = mask
    return out


def norm_stats(demos: Demos, key: str = "metaworld") -> dict:
    """``dataset_statistics.json`` in OFT's format.

    The gripper (last action dim) is not normalised (``mask`` False), as in OFT's LIBERO statistics:
    Meta-World's gripper command already lives in [-1, 1] and is nearly binary, so the head predicts
    it in the env's own units and q01/q99 could only squash the rare intermediate values.
    """
    a = demos.actions.shape[1]
    return {key: {"action": _block(demos.actions, [True] * (a - 1) + [False]), "proprio": _block(demos.state),
                  "num_transitions": len(demos), "num_trajectories": len(demos.instructions)}}


def normalize_actions(actions: np.ndarray, stats: dict) -> np.ndarray:
    """Inverse of :func:`vla_adp.model.transforms.unnormalize_actions` (q01/q99), clipped to [-1, 1]."""
    lo, hi = np.asarray(stats["q01"]), np.asarray(stats["q99"])
    mask = np.asarray(stats.get("mask", np.ones_like(lo, bool)), bool)
    normed = np.where(mask, 2 * (actions - lo) / (hi - lo + 1e-8) - 1, actions)
    return np.clip(normed, -1, 1)


# -- targets and batches ---------------------------------------------------------------------
def chunk_index(demos: Demos, idx: np.ndarray, chunk: int) -> np.ndarray:
    """(B, chunk) frame indices of the next ``chunk`` actions, clamped to each episode's last frame."""
    last = demos.ends[demos.episode[idx]] - 1
    return np.minimum(idx[:, None] + np.arange(chunk)[None], last[:, None])


class BatchBuilder:
    """Turns frame indices into :class:`OFTInputs` and normalised targets, as the Policy would.

    Args:
        demos: the frames.
        tokenizer: the checkpoint's prompt tokenizer.
        stats: ``dataset_statistics.json`` entry of this dataset (``action``, ``proprio``).
        towers: the model's vision towers (pixel mean/std per tower).
        chunk: actions per query.
    """

    def __init__(self, demos: Demos, tokenizer: PromptTokenizer, stats: dict, towers, chunk: int):
        self.demos, self.stats, self.chunk = demos, stats, chunk
        self.means, self.stds = [t.mean for t in towers], [t.std for t in towers]
        self.space_id = tokenizer.space_id
        self.ids = {s: tokenizer.prompt_ids(s) for s in set(demos.instructions)}
        self.proprio = T.normalize_proprio(demos.state, stats["proprio"]).astype(np.float32)
        self.targets = normalize_actions(demos.actions.astype(np.float64), stats["action"]).astype(np.float32)

    def pixels(self, idx: np.ndarray) -> torch.Tensor:
        views = [self.demos.full_image, self.demos.wrist_image]
        per = [np.concatenate([T.normalize_pixels(v[i], self.means, self.stds) for v in views]) for i in idx]
        return torch.from_numpy(np.stack(per))

    def prompts(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.ids[self.demos.instructions[e]] for e in self.demos.episode[idx]]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.space_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = True
        return ids, mask

    def __call__(self, idx: np.ndarray) -> tuple[OFTInputs, torch.Tensor]:
        ids, mask = self.prompts(idx)
        inputs = OFTInputs(self.pixels(idx), ids, torch.from_numpy(self.proprio[idx]), mask)
        target = torch.from_numpy(self.targets[chunk_index(self.demos, idx, self.chunk)])  # (B, chunk, dim)
        return inputs, target
