"""A loaded π0 / π0.5 checkpoint as a policy: ``infer(obs) -> {"actions", "info"}``.

Observation (LeRobot's LIBERO feature names): ``{"observation.images.<cam>": HWC uint8 or CHW float
in [0, 1], "observation.state": (state_dim,), "task": str}``. The steps are LeRobot's pi05 pipelines
(``policies/pi05/processor_pi05.py``) around ``PI05Policy.predict_action_chunk``: normalise the state,
discretise it into the prompt (π0.5) or pad it for the state token (π0), tokenise, resize the images
with padding, sample a chunk, cut it to the dataset's action width, un-normalise.

This is the family's own entry point until the model seam exists; it does not go through
:class:`vla_adp.policy.Policy` (OpenVLA-OFT's) and takes a π0 :class:`PrefixSelector` instead of a
:class:`vla_adp.pruning.base.Pruner`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vla_adp.model.pi0.checkpoint import Pi0Checkpoint, load_pi0_checkpoint
from vla_adp.model.pi0.pi0 import Pi0Inputs, PrefixSelector
from vla_adp.model.pi0.processor import (PromptTokenizer, discretize_state, normalize, pad_vector, prompt_text,
                                         resize_with_pad, unnormalize)

STATE, ACTION = "observation.state", "action"


class Pi0Policy:
    def __init__(self, ckpt: Pi0Checkpoint, tokenizer_file: str | Path | None = None, seed: int = 0):
        self.ckpt, self.model, self.args = ckpt, ckpt.model, ckpt.args
        tok = tokenizer_file or ckpt.tokenizer_file
        if tok is None:
            raise FileNotFoundError(f"{ckpt.path}: no tokenizer.model; pass PaliGemma's SentencePiece file "
                                    "(google/paligemma-3b-pt-224 'tokenizer.model') as tokenizer_file")
        self.tokenizer = PromptTokenizer(tok, self.args.tokenizer_max_length)
        self.cameras = [k for k, f in ckpt.features.items() if f.get("type") == "VISUAL"]
        self.action_dim = ckpt.features[ACTION]["shape"][0]
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def load(cls, folder: str | Path, dtype: torch.dtype = torch.float32, **kwargs) -> Pi0Policy:
        return cls(load_pi0_checkpoint(folder, dtype=dtype), **kwargs)

    def reset(self) -> None:
        """Nothing to reset: the model is stateless between queries (a selector may not be)."""

    def inputs(self, obs: dict[str, Any]) -> Pi0Inputs:
        missing = [k for k in (*self.cameras, STATE, "task") if k not in obs]
        if missing:
            raise ValueError(f"observation lacks {missing}; it has {sorted(obs)}")
        state = torch.as_tensor(np.asarray(obs[STATE], dtype=np.float32))[None]
        want = self.ckpt.features[STATE]["shape"][0]
        if state.shape[1] != want:
            raise ValueError(f"{STATE} must have {want} values, got {state.shape[1]}")
        norm_state = normalize(state, self.ckpt.stats[STATE], self.ckpt.norm_map.get("STATE", "IDENTITY"))
        bins = discretize_state(norm_state[0].numpy()) if self.args.pi05 else None
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
    def infer(self, obs: dict[str, Any], selector: PrefixSelector | None = None) -> dict[str, Any]:
        """One chunk of un-normalised actions (chunk_size, action_dim) and timing."""
        t0 = time.perf_counter()
        inputs = self.inputs(obs)
        dtype = next(self.model.parameters()).dtype
        inputs.images = inputs.images.to(dtype)
        noise = torch.randn(1, self.args.chunk_size, self.args.max_action_dim, generator=self.generator)
        chunk = self.model.sample_actions(inputs, noise=noise, selector=selector)[0, :, : self.action_dim]
        actions = unnormalize(chunk.float(), self.ckpt.stats[ACTION], self.ckpt.norm_map.get("ACTION", "IDENTITY"))
        return {"actions": actions.numpy(), "info": {"infer_ms": 1e3 * (time.perf_counter() - t0),
                                                      "prompt_tokens": int(inputs.token_mask.sum())}}
