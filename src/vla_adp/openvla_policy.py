"""OpenVLA as a policy: ``infer(obs) -> {"actions", "info"}`` through :class:`vla_adp.policy.Policy`.

Mirrors upstream's LIBERO path (``experiments/robot/openvla_utils.py`` ``get_vla_action`` and
``predict_action``): one image (``full_image``), resized and optionally center-cropped as OFT's
transforms do, the prompt ``In: What action should the robot take to {instruction.lower()}?\\nOut:``
with BOS and the trailing '▁', greedy decoding of ``len(q01)`` action tokens with the KV cache, bin
de-tokenisation and q01/q99 un-normalisation under the mask (no ``+ 1e-8``). No proprio token: the
state is read only by a pruner's gate (ADP). Everything else (``infer``: sessions, the pruner protocol
through :func:`vla_adp.seam.query.run_query`, ``info``, timing) is :class:`~vla_adp.policy.Policy`'s;
this class supplies the inputs, the forward options and the un-normalisation. ``PolicyConfig.action_slice``
and ``decode`` are OFT's and have no effect here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_adp.constants import Platform
from vla_adp.model.openvla.actions import unnormalize_actions
from vla_adp.model.openvla.checkpoint import OpenVLACheckpoint, load_openvla_checkpoint
from vla_adp.model.openvla.flops import decode_flops
from vla_adp.model.openvla.layout import PrefillLayout
from vla_adp.model.openvla.openvla import OpenVLAInputs
from vla_adp.policy import Policy, PolicyConfig, Session, infer_each, instruction_of
from vla_adp.seam.context import Pruner
from vla_adp.seam.flops import llm_flops

# Pruners whose scores need the OFT sequence's action slots in the prefill; OpenVLA has none there.
NEEDS_ACTION_SLOTS = ("vla_pruner",)


class OpenVLAPolicy(Policy):
    def __init__(self, checkpoint: OpenVLACheckpoint, config: PolicyConfig = PolicyConfig(),
                 pruner: Pruner | None = None):
        name = getattr(pruner, "name", None)
        if name in NEEDS_ACTION_SLOTS:
            raise ValueError(f"pruner {name!r} scores the action slots of OpenVLA-OFT's prefill; OpenVLA generates "
                             "its action tokens after the prefill, so it has none: build VLA-Pruner's OpenVLA variant "
                             "with vla_adp.pruning.openvla.build_openvla_pruner('vla_pruner', ...)")
        super().__init__(checkpoint, config, pruner)
        self.n_tokens = len(self.stats["action"]["q01"])  # upstream get_action_dim(unnorm_key)
        self.platform = dataclasses.replace(self.platform, action_dim=self.n_tokens)

    def set_executor(self, executor) -> None:
        """Only eager execution: OFT's CUDA-graph / compile executor has no static KV cache for decoding."""
        if executor is not None:
            raise ValueError("OpenVLA runs eagerly; the CUDA-graph / compiled executor covers OpenVLA-OFT only")

    @staticmethod
    def read_checkpoint(path: str | Path, config: PolicyConfig, platform: Platform | None, dtype: torch.dtype,
                        device: str) -> OpenVLACheckpoint:
        """An ``openvla/openvla-7b``-layout folder (``Policy.load`` resolves Hub repo ids and the dtype first)."""
        return load_openvla_checkpoint(path, dtype=dtype, device=device, platform=platform)

    # -- transforms ------------------------------------------------------------------------
    def inputs(self, obs: dict, images: list[np.ndarray] | None = None) -> tuple[OpenVLAInputs, PrefillLayout]:
        """Model inputs of one observation (one image, the prompt; no proprio) and their prefill layout."""
        images = self.images(obs) if images is None else images
        ids = torch.tensor([self.tokenizer.prompt_ids(instruction_of(obs))])
        dev = self.model.device
        inputs = OpenVLAInputs(self.pixels(images).to(dev), ids.to(dev))
        return inputs, self.model.layout(inputs)

    def forward_options(self) -> dict[str, Any]:
        """Greedy decoding of one action's tokens (``len(q01)`` of the statistics, upstream's ``get_action_dim``)."""
        return {"n_tokens": self.n_tokens}

    def actions(self, normalised) -> np.ndarray:
        """(1, action_dim): upstream's q01/q99 rule on the float64 bin centres (no ``+ 1e-8``)."""
        return unnormalize_actions(normalised[0].cpu().numpy(), self.stats["action"])

    # -- inference -------------------------------------------------------------------------
    @torch.inference_mode()
    def infer_batch(self, observations: list[dict], sessions: list[Session]) -> list[dict[str, Any] | Exception]:
        """One :meth:`infer` per observation (upstream generates batch 1); bad observations fail alone."""
        return infer_each(self.infer, observations, sessions)

    def _info(self, s: Session, layout, out) -> dict[str, Any]:
        """OFT's ``info`` plus the decoding: action tokens, decode-step FLOPs and the keys each layer held."""
        info = super()._info(s, layout, out)
        info["action_tokens"] = out.tokens[0].tolist()
        llm = self.model.args.llm
        full = decode_flops(llm, [layout.length] * llm.n_layers, self.n_tokens)
        dec = decode_flops(llm, out.cache_lens, self.n_tokens)
        info.update(cache_lens=list(out.cache_lens), flops_decode=dec,
                    flops_full=llm_flops(llm, [layout.length] * llm.n_layers) + full,
                    flops_llm=info["flops_llm"] + dec, flops=info["flops_llm"] + dec)
        return info
