"""Policy = transforms + model + pruner: ``infer(obs) -> {"actions", "info"}`` and ``reset()``.

Mirrors OpenVLA-OFT's ``get_vla_action`` (moojink/openvla-oft ``experiments/robot/openvla_utils.py``;
docs/reference.md §5): images (``full_image`` first, then
every key containing "wrist" in insertion order) are resized to the model's input if needed, center
cropped (90 % area, as the published LIBERO checkpoints were trained), normalised per vision tower;
the prompt gets BOS and the trailing '▁'; the state is q01/q99-normalised; the predicted chunk is
un-normalised. Platform-specific post-processing (LIBERO's gripper flip) belongs to the env adapter.

The LIBERO runner, the Meta-World runner and the policy server all go through this class.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_adp.model.checkpoint import Checkpoint, load_checkpoint, resolve_unnorm_key
from vla_adp.model.executor import Executor
from vla_adp.model.hub import is_repo_id, resolve_checkpoint
from vla_adp.model.openvla_oft import DECODES, OFTInputs
from vla_adp.model.tokenizer import PromptTokenizer
from vla_adp.model import transforms as T
from vla_adp.seam.context import Pruner, Query
from vla_adp.seam.flops import llm_flops
from vla_adp.seam.layout import ACTION_SLICES, TokenLayout
from vla_adp.seam.query import begin_query, end_query, run_query
from vla_adp.utils.machine import default_dtype
from vla_adp.utils.timing import Stopwatch


def infer_each(infer, observations: list[dict], sessions: list[Session]) -> list[dict[str, Any] | Exception]:
    """``infer(obs, session)`` per observation, batch 1 each (families whose model runs one query at a
    time); a bad observation fails alone: its slot holds the exception, the others go on."""
    if len(observations) != len(sessions):
        raise ValueError(f"{len(observations)} observations but {len(sessions)} sessions")
    results: list[Any] = []
    for obs, s in zip(observations, sessions):
        try:
            results.append(infer(obs, s))
        except Exception as e:  # noqa: BLE001 - this query fails, the others go on
            results.append(e)
    return results


@dataclass(frozen=True)
class PolicyConfig:
    """Inference settings that are not part of the checkpoint.

    Args:
        unnorm_key: dataset in ``dataset_statistics.json`` (``<suite>`` or ``<suite>_no_noops``);
            ``None`` takes the only one.
        center_crop: 90 %-area center crop (True for every published LIBERO checkpoint); ``None``
            takes what the checkpoint's writer recorded, else True.
        action_slice: ``upstream`` (matches OFT training) or ``vla_adp`` (reference ADP's +1).
        decode: ``l1`` (action head) or ``discrete`` (lm_head bins).
        lenient_unnorm_key: also accept the reference ADP fallbacks for the key.
        batch_invariant: :meth:`Policy.infer_batch` gives every query the answer :meth:`Policy.infer`
            gives it, bit for bit (the model's batch-dependent stages run per row,
            :mod:`vla_adp.model.invariance`); ``None``: on where that holds, a model on a CPU.
    """

    unnorm_key: str | None = None
    center_crop: bool | None = None
    action_slice: str = "upstream"
    decode: str = "l1"
    lenient_unnorm_key: bool = False
    batch_invariant: bool | None = None

    def __post_init__(self) -> None:
        if self.action_slice not in ACTION_SLICES:
            raise ValueError(f"action_slice must be one of {ACTION_SLICES}, got {self.action_slice!r}")
        if self.decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {self.decode!r}")
        if self.batch_invariant not in (None, True, False):
            raise ValueError(f"batch_invariant must be True, False or None, got {self.batch_invariant!r}")


@dataclass
class Session:
    """One episode's state: its pruner instance, query counter and recorded trajectory.

    A local run uses the policy's own session; the policy server keeps one per robot/episode.
    """

    pruner: Pruner | None = None
    query_index: int = 0
    trajectory: list[np.ndarray] = field(default_factory=list)

    def reset(self) -> None:
        self.query_index = 0
        self.trajectory = []
        if self.pruner is not None:
            self.pruner.reset()


def instruction_of(obs: dict) -> str:
    """``instruction`` (or ``task_description``) as a str; numpy strings (``np.load``'s 0-d arrays) too."""
    value = obs.get("instruction", obs.get("task_description"))
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "US":
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"observation needs a non-empty 'instruction' string, got {type(value).__name__} {value!r:.80}")
    return str(value)


def camera_keys(obs: dict) -> list[str]:
    """``full_image`` first, then every key containing 'wrist', in insertion order (docs/reference.md §5)."""
    return ["full_image", *[k for k in obs if "wrist" in k and k != "full_image"]]


class Policy:
    def __init__(self, checkpoint: Checkpoint, config: PolicyConfig = PolicyConfig(), pruner: Pruner | None = None):
        self.ckpt = checkpoint
        self.model = checkpoint.model
        self.config = config
        self.pruner_template = pruner
        self.session = Session(pruner)
        self.platform = checkpoint.platform
        recorded = (checkpoint.config.get("vla_adp") or {}).get("center_crop", True)
        self.center_crop = recorded if config.center_crop is None else config.center_crop
        self.tokenizer = PromptTokenizer(checkpoint.tokenizer_file)
        key = resolve_unnorm_key(checkpoint.norm_stats, config.unnorm_key, config.lenient_unnorm_key)
        self.unnorm_key = key
        self.stats = checkpoint.norm_stats[key]
        invariant = config.batch_invariant
        self.model.set_batch_invariant(self.model.device.type == "cpu" if invariant is None else invariant)
        # Section clock of info["timing_ms"] (synchronising wall clock); the GPU latency protocol puts
        # CUDA events here (vla_adp.bench.latency.EventStopwatch, docs/latency.md).
        self.stopwatch = Stopwatch
        self.reset()

    @classmethod
    def load(cls, path: str | Path, config: PolicyConfig = PolicyConfig(), pruner: Pruner | None = None,
             platform=None, dtype: torch.dtype | None = None, device: str = "cpu") -> "Policy":
        """``path``: a checkpoint folder, or a Hub repo id resolved through the Hub cache
        (:mod:`vla_adp.model.hub`). ``dtype=None``: :func:`~vla_adp.utils.machine.default_dtype` of ``device`` (the CLI's rule)."""
        if not Path(path).exists() and is_repo_id(str(path)):
            path = resolve_checkpoint(path)
        dtype = default_dtype(device) if dtype is None else dtype
        return cls(cls.read_checkpoint(path, config, platform, dtype, device), config, pruner)

    @staticmethod
    def read_checkpoint(path: str | Path, config: PolicyConfig, platform, dtype: torch.dtype,
                        device: str) -> Checkpoint:
        """The family's checkpoint reader (OFT: the action head is required for ``decode="l1"``)."""
        return load_checkpoint(path, platform=platform, dtype=dtype, device=device,
                               require_action_head=config.decode == "l1")

    def set_executor(self, executor: Executor | None) -> None:
        """How the model's fixed-shape blocks run: eagerly (None), as CUDA graphs captured per kept
        length, or compiled (:mod:`vla_adp.model.executor`). The pruner's own work stays eager."""
        self.model.set_executor(executor)

    # -- episode state ---------------------------------------------------------------------
    @property
    def pruner(self) -> Pruner | None:
        return self.session.pruner

    def new_session(self) -> Session:
        """A fresh episode state with its own copy of the pruner (for serving several robots)."""
        return Session(copy.deepcopy(self.pruner_template))

    def reset(self, session: Session | None = None) -> None:
        """Start a new episode: query counter, recorded trajectory, and the pruner's state."""
        (session or self.session).reset()

    def record_step(self, state: np.ndarray, session: Session | None = None) -> None:
        """Optionally report the raw state after every executed step (path-length gating)."""
        (session or self.session).trajectory.append(np.asarray(state, np.float64).copy())

    # -- transforms ------------------------------------------------------------------------
    def images(self, obs: dict) -> list[np.ndarray]:
        keys = camera_keys(obs)
        n = self.model.args.n_images
        if len(keys) < n or any(k not in obs for k in keys[:1]):
            raise ValueError(f"observation needs {n} images (full_image + wrist keys), found keys {keys}")
        size = self.model.args.image_size
        return [T.policy_image(T.check_image(np.asarray(obs[key]), key), size, self.center_crop) for key in keys[:n]]

    def pixels(self, images: list[np.ndarray]) -> torch.Tensor:
        return T.pixel_batch(images, self.model.args.towers)

    def inputs(self, obs: dict, images: list[np.ndarray] | None = None) -> tuple[OFTInputs, TokenLayout]:
        """Model inputs of one observation and their unpruned layout (built by the model);
        ``images``: :meth:`images` of it, if already made."""
        images = self.images(obs) if images is None else images
        instruction = instruction_of(obs)
        ids = torch.tensor([self.tokenizer.prompt_ids(instruction)])
        proprio = None
        if self.model.args.use_proprio:
            state = np.asarray(obs["state"], np.float64)
            if state.shape != (self.platform.proprio_dim,):
                raise ValueError(f"state must have shape ({self.platform.proprio_dim},), got {state.shape}")
            proprio = torch.from_numpy(T.normalize_proprio(state, self.stats["proprio"], self.platform.normalization))[None]
        dev = self.model.device
        inputs = OFTInputs(self.pixels(images).to(dev), ids.to(dev),
                           None if proprio is None else proprio.float().to(dev))
        return inputs, self.model.layout(inputs)

    # -- inference -------------------------------------------------------------------------
    @torch.inference_mode()
    def infer(self, obs: dict, session: Session | None = None) -> dict[str, Any]:
        """One action chunk (chunk, action_dim), un-normalised, and what happened in ``info``."""
        s = session or self.session
        t0 = time.perf_counter()
        timer = self.stopwatch(self.model.device)
        with timer("transforms"):
            images = self.images(obs)
            inputs, layout = self.inputs(obs, images)
        r = run_query(self.model, inputs, s.pruner, self.query(s, layout, obs, images), self.actions, timer,
                      **self.forward_options())
        result = self._finish(s, r.query.layout, r.output, r.actions, r.report)
        result["info"]["timing_ms"] = {**timer.ms(), "total": 1e3 * (time.perf_counter() - t0)}
        return result

    def forward_options(self) -> dict[str, Any]:
        """What the model's forward takes besides inputs, pruner and hooks (OFT: which hidden states
        are the action slots and how they are decoded). Families with other options override it."""
        return {"action_slice": self.config.action_slice, "decode": self.config.decode}

    def actions(self, normalised) -> np.ndarray:
        """Batch row 0 of the model's normalised chunk in the environment's units (OFT: q01/q99 with
        its + 1e-8); what the pruner's ``end`` sees. Families with another rule override it."""
        norm = normalised[0].float().cpu().numpy()
        return T.unnormalize_actions(norm, self.stats["action"], self.platform.normalization)

    def _finish(self, s: Session, layout: TokenLayout, out, actions: np.ndarray, report: dict) -> dict[str, Any]:
        """``info`` of one answered query (with the pruner's ``report``); the session moves on."""
        info = self._info(s, layout, out)
        if s.pruner is not None:
            info.update(report)
            # FLOPs of the query = decoder + the pruner's own scoring (e.g. ADP's Eq. 22 / probe pass).
            info["flops"] = info["flops_llm"] + float(info.get("scoring_flops", 0.0))
        s.query_index += 1
        s.trajectory = []
        return {"actions": actions, "info": info}

    @torch.inference_mode()
    def infer_batch(self, observations: list[dict], sessions: list[Session]) -> list[dict[str, Any] | Exception]:
        """:meth:`infer` for many episodes at once: one forward per group of queries that share a
        prompt length and hook layers (:func:`vla_adp.model.batched.forward_rows`);
        each query runs its own session's pruner. Returns one ``infer`` result per observation, or
        the exception its input raised (bad observations fail alone). ``info["timing_ms"]`` holds
        the whole batch's stages and ``info["batch"]`` its size.
        """
        from vla_adp.model.batched import forward_rows, stack_inputs

        if len(observations) != len(sessions):
            raise ValueError(f"{len(observations)} observations but {len(sessions)} sessions")
        t0 = time.perf_counter()
        timer = self.stopwatch(self.model.device)
        results: list[Any] = [None] * len(observations)
        groups: dict[tuple, list[tuple[int, OFTInputs, TokenLayout]]] = {}
        for i, (obs, s) in enumerate(zip(observations, sessions)):
            try:
                with timer("transforms"):
                    images = self.images(obs)
                    inputs, layout = self.inputs(obs, images)
                query, hooks = begin_query(self.model, inputs, s.pruner, self.query(s, layout, obs, images), timer)
            except Exception as e:  # noqa: BLE001 - this query fails, the others go on
                results[i] = e
                continue
            groups.setdefault((inputs.input_ids.shape[1], hooks), []).append((i, inputs, query.layout))
        done = []
        for (_, hooks), rows in groups.items():
            pruners = [sessions[i].pruner for i, _, _ in rows]
            outs = forward_rows(self.model, stack_inputs([x for _, x, _ in rows]), pruners, hooks,
                                self.config.action_slice, self.config.decode, timer)
            done += [(i, layout, out) for (i, _, layout), out in zip(rows, outs)]
        for i, layout, out in done:
            s = sessions[i]
            actions = self.actions(out.actions)
            results[i] = self._finish(s, layout, out, actions, end_query(s.pruner, out, actions, timer))
        timing = {**timer.ms(), "total": 1e3 * (time.perf_counter() - t0)}
        for r in results:
            if isinstance(r, dict):
                r["info"]["timing_ms"] = dict(timing)
                r["info"]["batch"] = len(done)
        return results

    def query(self, s: Session, layout: TokenLayout, obs: dict, images: list[np.ndarray] | None = None) -> Query:
        """What the pruner may know: end-effector pose now, the path since the last query, the images."""
        pos_slice, rot_slice = self.platform.eef_pos, self.platform.eef_rot
        state = np.asarray(obs["state"], np.float64) if "state" in obs else None
        frames = None if images is None else tuple(images)
        if state is None or pos_slice is None:
            return Query(s.query_index, layout, images=frames)
        pos = state[slice(*pos_slice)]
        rot = state[slice(*rot_slice)] if rot_slice else None
        path = [t[slice(*pos_slice)] for t in s.trajectory]
        return Query(s.query_index, layout, pos, rot, path, images=frames)

    def _info(self, s: Session, layout: TokenLayout, out) -> dict[str, Any]:
        kept = [layout.n_visual] if not out.keep_sets else [k.n_kept for k in out.keep_sets]
        views = out.layout.views
        keep_idx = None
        if out.keep_sets:  # per camera, indices local to that camera's patch grid (0..P-1)
            last = out.keep_sets[0].visual_index[0].cpu()
            for keep_set in out.keep_sets[1:]:  # a later cut indexes the tokens the earlier one left
                last = last[keep_set.visual_index[0].cpu()]
            bounds = np.cumsum((0, *views))
            keep_idx = [(last[bounds[c]:bounds[c + 1]] - layout.view_of_visual(c).start).tolist()
                        for c in range(len(views))]
        return {
            "query": s.query_index,
            "pruner": getattr(s.pruner, "name", None),
            "pruned": bool(out.keep_sets),
            "seq_len": layout.length,
            "seq_len_pruned": out.layout.length,
            "n_visual": layout.n_visual,
            "kept_visual": kept[-1],
            "kept_per_view": list(views),
            "kept_indices": keep_idx,
            "seq_lens": list(out.seq_lens),  # tokens each decoder layer ran on
            "flops_full": llm_flops(self.model.args.llm.shape, [layout.length] * len(out.seq_lens)),
            "flops_llm": llm_flops(self.model.args.llm.shape, out.seq_lens),
            "flops": llm_flops(self.model.args.llm.shape, out.seq_lens),
        }
