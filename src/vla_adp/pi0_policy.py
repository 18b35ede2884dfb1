"""A loaded π0 / π0.5 checkpoint as a policy: ``infer(obs) -> {"actions", "info"}`` on the model seam.

Observation (LeRobot's LIBERO feature names): ``{"observation.images.<cam>": HWC uint8 or CHW float
in [0, 1], "observation.state": (state_dim,), "task": str}``. The servers' observation (OpenVLA-OFT's ``deploy.py``
keys: ``full_image``, ``*wrist*`` images, ``state``, ``instruction``) is accepted too and renamed
(:meth:`Pi0Policy.lerobot_observation`). The steps are LeRobot's pi05 pipelines
(``policies/pi05/processor_pi05.py``) around ``PI05Policy.predict_action_chunk``: normalise the state,
discretise it into the prompt (π0.5) or pad it for the state token (π0), tokenise, resize the images
with padding, sample a chunk, cut it to the dataset's action width, un-normalise.

One query is :func:`vla_adp.seam.query.run_query` with a registry pruner
(:func:`vla_adp.pruning.pi0.build_pi0_pruner`; ADP's gate comes with the ``adp`` pruner and is fed the
LIBERO state's end-effector pose): the pruner cuts the prefix, the denoising steps read the pruned
cache. Sessions, ``reset``/``record_step``/``new_session`` and the ``info`` fields follow
:class:`vla_adp.policy.Policy`, so the evaluation runner (:func:`vla_adp.eval.runner.run_episode`) and
the servers drive it the same way.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vla_adp.constants import Platform
from vla_adp.model.pi0.checkpoint import Pi0Checkpoint, load_pi0_checkpoint
from vla_adp.model.pi0.flops import pi0_flops
from vla_adp.model.pi0.pi0 import Pi0Inputs, Pi0Output
from vla_adp.model.pi0.processor import (PromptTokenizer, discretize_state, normalize, pad_vector, prompt_text,
                                         resize_with_pad, unnormalize)
from vla_adp.policy import PolicyConfig, Session, infer_each
from vla_adp.seam.context import Pruner, Query
from vla_adp.seam.layout import TokenLayout
from vla_adp.seam.query import run_query
from vla_adp.utils.machine import default_dtype
from vla_adp.utils.timing import Stopwatch

STATE, ACTION = "observation.state", "action"


OFT_SETTINGS = {"unnorm_key": ("--unnorm-key", (None,)), "center_crop": ("--no-center-crop", (None, True)),
                "action_slice": ("--action-slice", (None, "upstream"))}


def pi0_config(**fields: Any) -> None:
    """π0's config from OpenVLA-OFT's :class:`~vla_adp.policy.PolicyConfig` fields: none applies, so the
    values that mean "nothing asked" (``None``, and the defaults the commands fill in: crop on, the
    ``upstream`` slice) give ``None`` and an explicit OFT setting is an error naming it."""
    unknown = sorted(set(fields) - set(OFT_SETTINGS))
    if unknown:
        raise ValueError(f"π0 / π0.5 take no policy settings {unknown}; known (all OpenVLA-OFT's): "
                         f"{sorted(OFT_SETTINGS)}")
    asked = {k: v for k, v in fields.items() if v not in OFT_SETTINGS[k][1]}
    if asked:
        flags = ", ".join(f"{OFT_SETTINGS[k][0]} ({k}={v!r})" for k, v in asked.items())
        raise ValueError(f"{flags}: OpenVLA-OFT's setting(s); π0 / π0.5 read normalisation, image and action "
                         "handling from the checkpoint's processor files and take none of them")
    return None


class Pi0Policy:
    """π0 / π0.5 + LeRobot's processors + a seam :class:`~vla_adp.seam.context.Pruner`.

    Args:
        ckpt: a loaded checkpoint (:func:`~vla_adp.model.pi0.checkpoint.load_pi0_checkpoint`).
        config: OpenVLA-OFT's :class:`~vla_adp.policy.PolicyConfig`; accepted so that every family loads
            alike, none of its fields applies to π0 (given values other than the defaults are refused).
        pruner: prunes the prefix (None: unpruned).
        tokenizer_file: PaliGemma's ``tokenizer.model`` where the folder has none.
        seed: the noise of query q in an episode is drawn from seed·100003 + q (per session, so two
            sessions never share a generator).
        replan_steps: actions executed per chunk (default the checkpoint's ``n_action_steps``).
        discrete_state: π0.5's state-in-prompt (LeRobot); openpi's ``pi05_libero`` turns it off.
        family: ``"pi0"`` or ``"pi05"``: the checkpoint type the caller expects (``--family``); the other
            type is an error naming both. ``None``: either.
        platform: overrides the platform built from the checkpoint's features (its ``chunk`` is then
            the actions executed per chunk; do not also give ``replan_steps``).
    """

    unnorm_key = None  # OpenVLA-OFT's dataset key; π0 reads its statistics from the checkpoint's processor files

    def __init__(self, ckpt: Pi0Checkpoint, config: PolicyConfig | None = None, pruner: Pruner | None = None,
                 tokenizer_file: str | Path | None = None, seed: int = 0, replan_steps: int | None = None,
                 discrete_state: bool | None = None, platform: Platform | None = None, family: str | None = None):
        if family is not None and family != ckpt.args.family:
            raise ValueError(f"--family {family} asked for, but {ckpt.path} is a {ckpt.args.family} checkpoint "
                             f"(config.json type {ckpt.args.family!r}): use --family {ckpt.args.family}")
        if config is not None and config != PolicyConfig():
            raise ValueError(f"PolicyConfig settings are OpenVLA-OFT's (unnorm key, centre crop, action slice, "
                             f"decode); π0 takes none of them, got {config!r}")
        self.ckpt, self.model, self.args = ckpt, ckpt.model, ckpt.args
        self.discrete_state = self.args.pi05 if discrete_state is None else discrete_state
        self.seed = seed
        tok = tokenizer_file or ckpt.tokenizer_file
        if tok is None:
            raise FileNotFoundError(f"{ckpt.path}: no tokenizer.model; pass PaliGemma's SentencePiece file "
                                    "(google/paligemma-3b-pt-224 'tokenizer.model') as tokenizer_file")
        self.tokenizer = PromptTokenizer(tok, self.args.tokenizer_max_length)
        self.cameras = [k for k, f in ckpt.features.items() if f.get("type") == "VISUAL"]
        self.action_dim = ckpt.features[ACTION]["shape"][0]
        if platform is not None and replan_steps is not None:
            raise ValueError(f"give replan_steps ({replan_steps}) or a platform (chunk {platform.chunk}), not both")
        self.platform = platform or self._platform(replan_steps)
        self.pruner_template = copy.deepcopy(pruner)  # never run: new sessions start from a fresh pruner
        self.session = Session(pruner)
        self.stopwatch = Stopwatch
        self.reset()

    def _platform(self, replan_steps: int | None) -> Platform:
        steps = replan_steps or int(self.ckpt.config.get("n_action_steps", self.args.chunk_size))
        if not 1 <= steps <= self.args.chunk_size:
            raise ValueError(f"replan_steps (n_action_steps) must be in 1..chunk_size {self.args.chunk_size}, got {steps}")
        state_dim = self.ckpt.features[STATE]["shape"][0]
        # LIBERO state = eef_pos(3) + axis-angle(3) + gripper(2): the gate reads the pose from it
        pose = ((0, 3), (3, 6)) if state_dim == 8 else (None, None)
        return Platform(f"{self.args.family}_libero", steps, self.action_dim, state_dim, "bounds_q99", *pose)

    @classmethod
    def load(cls, path: str | Path, config: PolicyConfig | None = None, pruner: Pruner | None = None,
             platform: Platform | None = None, dtype: torch.dtype | None = None, device: str = "cpu",
             lerobot_mixed: bool = False, **family_options) -> "Pi0Policy":
        """``path``: a LeRobot π0 / π0.5 folder; ``dtype=None``: the device's default (as ``Policy.load``);
        ``lerobot_mixed``: LeRobot's bf16 mix (:func:`~vla_adp.model.pi0.checkpoint.load_pi0_checkpoint`);
        ``family_options``: ``tokenizer_file``, ``seed``, ``replan_steps``, ``discrete_state``, ``family``."""
        dtype = default_dtype(device) if dtype is None else dtype
        ckpt = load_pi0_checkpoint(path, dtype=dtype, device=device, lerobot_mixed=lerobot_mixed)
        return cls(ckpt, config, pruner, platform=platform, **family_options)

    # -- episode state (as vla_adp.policy.Policy) -------------------------------------------------
    @property
    def pruner(self) -> Pruner | None:
        return self.session.pruner

    def new_session(self) -> Session:
        """A fresh episode state with its own copy of the pruner (for serving several robots)."""
        session = Session(copy.deepcopy(self.pruner_template))
        session.reset()
        return session

    def reset(self, session: Session | None = None) -> None:
        """New episode: query counter, recorded path and the pruner's state (ADP's gate, VLA-Pruner's history)."""
        (session or self.session).reset()

    def record_step(self, state, session: Session | None = None) -> None:
        (session or self.session).trajectory.append(np.asarray(state, np.float64).copy())

    def query(self, s: Session, obs: dict[str, Any]) -> Query:
        """The end-effector pose now and the path since the last query, from the raw LIBERO state."""
        state = np.asarray(obs[STATE], np.float64)
        pos, rot = self.platform.eef_pos, self.platform.eef_rot
        if pos is None:
            return Query(s.query_index)
        return Query(s.query_index, None, state[slice(*pos)], state[slice(*rot)] if rot else None,
                     [t[slice(*pos)] for t in s.trajectory])

    # -- transforms ------------------------------------------------------------------------------
    def served_inputs(self) -> dict[str, Any]:
        """What the servers check an observation against (:func:`vla_adp.serve.server.served_inputs`)."""
        return {"n_images": len(self.cameras), "image_size": self.args.vision.image_size, "needs_state": True}

    def lerobot_observation(self, obs: dict[str, Any]) -> dict[str, Any]:
        """LeRobot's keys from the servers' (``deploy.py``'s): ``full_image`` → the first camera, the
        ``*wrist*`` images in key order → the next ones, ``state`` → ``observation.state``,
        ``instruction`` → ``task``. An observation without ``full_image`` is returned as it is."""
        if "full_image" not in obs:
            return obs
        wrist = sorted(k for k in obs if "wrist" in k)
        if 1 + len(wrist) != len(self.cameras):
            raise ValueError(f"the checkpoint has {len(self.cameras)} cameras {self.cameras}; the observation has "
                             f"full_image and {len(wrist)} wrist image(s) {wrist}")
        renamed = dict(zip(self.cameras, [obs["full_image"], *(obs[k] for k in wrist)]))
        for ours, theirs in ((STATE, "state"), ("task", "instruction")):
            if theirs in obs:
                renamed[ours] = obs[theirs]
        return renamed

    def inputs(self, obs: dict[str, Any]) -> Pi0Inputs:
        missing = [k for k in (*self.cameras, STATE, "task") if k not in obs]
        if missing:
            raise ValueError(f"observation lacks {missing}; it has {sorted(obs)}")
        state = torch.as_tensor(np.asarray(obs[STATE], dtype=np.float32))
        want = self.ckpt.features[STATE]["shape"][0]
        if state.shape != (want,):
            raise ValueError(f"{STATE} must have {want} values, got shape {tuple(state.shape)}")
        norm_state = normalize(state[None], self.ckpt.stats[STATE], self.ckpt.norm_map.get("STATE", "IDENTITY"))
        bins = discretize_state(norm_state[0].numpy()) if self.discrete_state else None
        tokens, mask = self.tokenizer([prompt_text(str(obs["task"]), bins)])
        images, masks = self._images(obs)
        vision = next(self.model.vision.parameters())  # float32 under LeRobot's mixed precision
        dev, dtype = vision.device, vision.dtype
        return Pi0Inputs(images.to(dev, dtype), masks.to(dev), tokens.to(dev), mask.to(dev),
                         pad_vector(norm_state, self.args.max_state_dim).to(dev))

    def _images(self, obs: dict[str, Any]) -> tuple[Tensor, Tensor]:
        side, slots = self.args.vision.image_size, []
        for key in self.cameras:
            img = torch.as_tensor(np.asarray(obs[key]))
            if img.ndim != 3 or 3 not in (img.shape[0], img.shape[-1]):
                raise ValueError(f"{key} must be one HWC or CHW RGB image, got shape {tuple(img.shape)}")
            img = img.permute(2, 0, 1) if img.shape[-1] == 3 else img
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            slots.append(resize_with_pad(img[None], side)[0])
        empty = self.args.n_cameras - len(slots)
        slots += [torch.full((3, side, side), -1.0)] * empty  # LeRobot's empty cameras: −1, masked out
        masks = torch.tensor([True] * len(self.cameras) + [False] * empty)
        return torch.stack(slots)[None], masks[None]

    def actions(self, normalised: Tensor) -> np.ndarray:
        """Batch row 0 cut to the dataset's action width and un-normalised: (chunk, action_dim)."""
        return unnormalize(normalised[0, :, : self.action_dim].float().cpu(), self.ckpt.stats[ACTION],
                           self.ckpt.norm_map.get("ACTION", "IDENTITY")).numpy()

    # -- inference -------------------------------------------------------------------------------
    @torch.inference_mode()
    def infer(self, obs: dict[str, Any], session: Session | None = None) -> dict[str, Any]:
        """One chunk of un-normalised actions (chunk_size, action_dim) and the query record's fields."""
        s = session or self.session
        obs = self.lerobot_observation(obs)
        t0 = time.perf_counter()
        timer = self.stopwatch(self.model.projector.weight.device)
        with timer("transforms"):
            inputs = self.inputs(obs)
            g = torch.Generator().manual_seed(self.seed * 100_003 + s.query_index)
            noise = torch.randn(1, self.args.chunk_size, self.args.max_action_dim, generator=g)
        r = run_query(self.model, inputs, s.pruner, self.query(s, obs), self.actions, timer,
                      noise=noise.to(inputs.images.device))
        info = self._info(s, r.query.layout, r.output, inputs, r.report)
        info["timing_ms"] = {**timer.ms(), "total": 1e3 * (time.perf_counter() - t0)}
        s.query_index += 1
        s.trajectory = []
        return {"actions": r.actions, "info": info}

    def infer_batch(self, observations: list[dict], sessions: list[Session]) -> list[dict[str, Any] | Exception]:
        """One :meth:`infer` per observation (batch 1 each); bad observations fail alone."""
        return infer_each(self.infer, observations, sessions)

    def _info(self, s: Session, layout: TokenLayout, out: Pi0Output, inputs: Pi0Inputs,
              report: dict[str, Any]) -> dict[str, Any]:
        a = self.args
        cameras = len(out.cameras)
        full = pi0_flops(a, [layout.length] * a.vlm.depth, cameras=cameras).total
        flops = pi0_flops(a, out.prefix_lens, cameras=cameras).total
        info = {"query": s.query_index, "pruner": getattr(s.pruner, "name", None), "pruned": bool(out.keep_sets),
                "n_visual": layout.n_visual, "kept_visual": out.layout.n_visual, "kept_per_view": list(out.layout.views),
                "kept_indices": kept_indices(layout, out), "cameras": [self._camera_name(c) for c in out.cameras],
                "seq_len": layout.length, "seq_len_pruned": out.layout.length, "seq_lens": list(out.prefix_lens),
                "flops_full": float(full), "flops_model": float(flops), "prompt_tokens": int(inputs.token_mask.sum())}
        info.update(report)
        info["flops"] = float(flops) + float(info.get("scoring_flops", 0.0))
        return info

    def _camera_name(self, slot: int) -> str:
        return self.cameras[slot] if slot < len(self.cameras) else f"empty_{slot}"


def kept_indices(layout: TokenLayout, out) -> list[list[int]] | None:
    """Per camera, the kept tokens' indices in that camera's patch grid (batch row 0), after every cut."""
    if not out.keep_sets:
        return None
    last = out.keep_sets[0].visual_index[0].cpu()
    for keep_set in out.keep_sets[1:]:  # a later cut indexes the tokens the earlier one left
        last = last[keep_set.visual_index[0].cpu()]
    bounds = np.cumsum((0, *out.layout.views))
    return [(last[bounds[c]:bounds[c + 1]] - layout.view_of_visual(c).start).tolist() for c in range(len(bounds) - 1)]
