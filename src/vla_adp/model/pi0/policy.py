"""A loaded π0 / π0.5 checkpoint as a policy: ``infer(obs) -> {"actions", "info"}``.

Observation (LeRobot's LIBERO feature names): ``{"observation.images.<cam>": HWC uint8 or CHW float
in [0, 1], "observation.state": (state_dim,), "task": str}``. The steps are LeRobot's pi05 pipelines
(``policies/pi05/processor_pi05.py``) around ``PI05Policy.predict_action_chunk``: normalise the state,
discretise it into the prompt (π0.5) or pad it for the state token (π0), tokenise, resize the images
with padding, sample a chunk, cut it to the dataset's action width, un-normalise.

This is the family's own entry point until the model seam exists; it does not go through
:class:`vla_adp.policy.Policy` (OpenVLA-OFT's) and takes a π0 :class:`PrefixSelector` instead of a
:class:`vla_adp.seam.context.Pruner`. It meets the evaluation runner's contract
(:func:`vla_adp.eval.runner.run_episode`: ``infer``, ``reset``, ``record_step``, ``platform``, the
query-record fields in ``info``). ADP = ``gate`` (:class:`vla_adp.pruning.gate.ActionAwareGate`,
fed the LIBERO state's end-effector pose) + ``selector`` used on the queries the gate prunes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vla_adp.constants import Platform
from vla_adp.model.pi0.flops import pi0_flops
from vla_adp.model.pi0.checkpoint import Pi0Checkpoint, load_pi0_checkpoint
from vla_adp.model.pi0.flow import euler_sample
from vla_adp.model.pi0.pi0 import Pi0Inputs, PrefixContext, PrefixSelector
from vla_adp.model.pi0.processor import (PromptTokenizer, discretize_state, normalize, pad_vector, prompt_text,
                                         resize_with_pad, unnormalize)

STATE, ACTION = "observation.state", "action"


class Recorder:
    """Wraps a selector and remembers what it kept (for the query record)."""

    def __init__(self, selector: PrefixSelector):
        self.selector, self.layer, self.renumber = selector, selector.layer, selector.renumber
        self.kept: Tensor | None = None

    def __call__(self, ctx: PrefixContext) -> Tensor:
        self.kept = self.selector(ctx)
        return self.kept


class Pi0Policy:
    def __init__(self, ckpt: Pi0Checkpoint, tokenizer_file: str | Path | None = None, seed: int = 0,
                 selector: PrefixSelector | None = None, gate=None, replan_steps: int | None = None,
                 name: str | None = None, discrete_state: bool | None = None):
        self.ckpt, self.model, self.args = ckpt, ckpt.model, ckpt.args
        self.selector, self.gate, self.name = selector, gate, name
        # π0.5's state-in-prompt (LeRobot); openpi's pi05_libero config turns it off
        self.discrete_state = self.args.pi05 if discrete_state is None else discrete_state
        self.seed = seed
        tok = tokenizer_file or ckpt.tokenizer_file
        if tok is None:
            raise FileNotFoundError(f"{ckpt.path}: no tokenizer.model; pass PaliGemma's SentencePiece file "
                                    "(google/paligemma-3b-pt-224 'tokenizer.model') as tokenizer_file")
        self.tokenizer = PromptTokenizer(tok, self.args.tokenizer_max_length)
        self.cameras = [k for k, f in ckpt.features.items() if f.get("type") == "VISUAL"]
        self.action_dim = ckpt.features[ACTION]["shape"][0]
        self.generator = torch.Generator().manual_seed(seed)
        steps = replan_steps or int(ckpt.config.get("n_action_steps", self.args.chunk_size))
        if not 1 <= steps <= self.args.chunk_size:
            raise ValueError(f"replan_steps (n_action_steps) must be in 1..chunk_size {self.args.chunk_size}, got {steps}")
        state_dim = ckpt.features[STATE]["shape"][0]
        # LIBERO state = eef_pos(3) + axis-angle(3) + gripper(2): the gate reads the pose from it
        pose = ((0, 3), (3, 6)) if state_dim == 8 else (None, None)
        self.platform = Platform(f"{self.args.family}_libero", steps, self.action_dim, state_dim, "bounds_q99", *pose)
        self.query_index, self.path = 0, []

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32, **kwargs) -> Pi0Policy:
        return cls(load_pi0_checkpoint(folder, dtype=dtype), **kwargs)

    def reset(self) -> None:
        """New episode: query counter, recorded path, the gate's history, the noise generator."""
        self.query_index, self.path = 0, []
        self.generator.manual_seed(self.seed)
        if self.gate is not None:
            self.gate.reset()

    def record_step(self, state) -> None:
        pos = self.platform.eef_pos
        if pos is not None:
            self.path.append(np.asarray(state, np.float64)[slice(*pos)])

    def _gate_state(self, obs: dict[str, Any]) -> int:
        """1 = prune this query: always with a selector and no gate, the gate's decision with one."""
        if self.selector is None:
            return 0
        if self.gate is None:
            return 1
        from vla_adp.seam.context import Query

        state = np.asarray(obs[STATE], np.float64)
        pos, rot = self.platform.eef_pos, self.platform.eef_rot
        query = Query(self.query_index, None, state[slice(*pos)] if pos else None, state[slice(*rot)] if rot else None,
                      list(self.path))
        self.path = []
        return self.gate.decide(query)

    def inputs(self, obs: dict[str, Any]) -> Pi0Inputs:
        missing = [k for k in (*self.cameras, STATE, "task") if k not in obs]
        if missing:
            raise ValueError(f"observation lacks {missing}; it has {sorted(obs)}")
        state = torch.as_tensor(np.asarray(obs[STATE], dtype=np.float32))[None]
        want = self.ckpt.features[STATE]["shape"][0]
        if state.shape[1] != want:
            raise ValueError(f"{STATE} must have {want} values, got {state.shape[1]}")
        norm_state = normalize(state, self.ckpt.stats[STATE], self.ckpt.norm_map.get("STATE", "IDENTITY"))
        bins = discretize_state(norm_state[0].numpy()) if self.discrete_state else None
        tokens, mask = self.tokenizer([prompt_text(str(obs["task"]), bins)])
        images, masks = self._images(obs)
        return Pi0Inputs(images, masks, tokens, mask, pad_vector(norm_state, self.args.max_state_dim))

    def _images(self, obs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        side, slots = self.args.vision.image_size, []
        for key in self.cameras:
            img = torch.as_tensor(np.asarray(obs[key]))
            if img.ndim != 3:
                raise ValueError(f"{key} must be one HWC or CHW image, got shape {tuple(img.shape)}")
            img = img.permute(2, 0, 1) if img.shape[-1] == 3 else img
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            slots.append(resize_with_pad(img[None], side)[0])
        empty = self.args.n_cameras - len(slots)
        slots += [torch.full((3, side, side), -1.0)] * empty  # LeRobot's empty cameras: −1, masked out
        masks = torch.tensor([True] * len(self.cameras) + [False] * empty)
        return torch.stack(slots)[None], masks[None]

    @torch.no_grad()
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """One chunk of un-normalised actions (chunk_size, action_dim) and the query record's fields."""
        t0 = time.perf_counter()
        pruned = self._gate_state(obs) == 1
        inputs = self.inputs(obs)
        inputs.images = inputs.images.to(next(self.model.parameters()).dtype)
        noise = torch.randn(1, self.args.chunk_size, self.args.max_action_dim, generator=self.generator)
        t1 = time.perf_counter()
        recorder = Recorder(self.selector) if pruned else None
        cache = self.model.encode_prefix(inputs, recorder)
        t2 = time.perf_counter()
        chunk = euler_sample(lambda x, t: self.model.denoise(cache, inputs.state, x, t), noise, self.args.num_steps)
        actions = unnormalize(chunk[0, :, : self.action_dim].float(), self.ckpt.stats[ACTION],
                              self.ckpt.norm_map.get("ACTION", "IDENTITY")).numpy()
        if self.gate is not None:
            self.gate.observe_actions(actions)
        t3 = time.perf_counter()
        info = self._record(inputs, cache.lengths, recorder, pruned)
        info["timing_ms"] = {"preprocess": 1e3 * (t1 - t0), "prefix": 1e3 * (t2 - t1), "denoise": 1e3 * (t3 - t2)}
        self.query_index += 1
        return {"actions": actions, "info": info}

    def _record(self, inputs: Pi0Inputs, lengths: list[int], recorder: Recorder | None, pruned: bool) -> dict:
        a, n = self.args, self.args.vision.num_patches
        n_visual = n * int(inputs.image_masks.sum())
        per_view = [n * int(m) for m in inputs.image_masks[0]]
        if recorder is not None and recorder.kept is not None:
            kept = recorder.kept[0]
            per_view = [int(((kept >= c * n) & (kept < (c + 1) * n)).sum()) for c in range(a.n_cameras)]
        info = {"query": self.query_index, "pruner": self.name, "pruned": pruned, "kept_visual": sum(per_view),
                "n_visual": n_visual, "kept_per_view": per_view, "seq_len": a.prefix_len, "seq_len_pruned": lengths[-1],
                "flops": float(pi0_flops(a, lengths).total), "flops_full": float(pi0_flops(a).total),
                "prompt_tokens": int(inputs.token_mask.sum())}
        if self.gate is not None:
            info.update(self.gate.info())
        return info
