"""A vla-adp policy (any pruner) as a vla-eval model server (``vla-adp serve --protocol vla-eval``).

vla-eval (PyPI ``vla-eval``, allenai/vla-evaluation-harness) keeps benchmarks and models in separate
processes: its benchmark side connects with ``vla_eval.connection.Connection`` and speaks its own
msgpack protocol (HELLO, EPISODE_START, OBSERVATION -> ACTION, EPISODE_END; see
``vla_eval/model_servers/serve.py``). A model plugs in as a ``PredictModelServer`` subclass
(``vla_eval/model_servers/predict.py``) whose ``predict(obs, ctx)`` returns an action chunk; the
framework serves the chunk one action per observation. This module is that subclass for
:class:`~vla_adp.policy.Policy`, following vla-eval's own OpenVLA-OFT server
(``vla_eval/model_servers/oft.py``) where the two meet:

* observation: ``images`` (a dict; the first is ``full_image``, the next ones the wrist cameras),
  ``states`` (or ``state``), ``task_description``; checked by
  :func:`vla_adp.serve.validate.check_act` (a bad one answers vla-eval's ERROR message, the
  connection stays open). LIBERO images arrive at 256² and take the policy's own resize.
* episode state: every connection's episode (``EPISODE_START``) gets a fresh
  ``policy.new_session()``; the state of every observation after the first, including those
  answered from the chunk buffer without a query, is recorded with ``Policy.record_step`` (the
  path-length gate sees the whole executed path, as in ``vla-adp eval``).
* actions: the un-normalised chunk; on LIBERO the gripper goes through the OpenVLA family's
  post-processing (:func:`vla_adp.model.transforms.libero_gripper`), as ``oft.py`` does.
* ``get_observation_params``: LIBERO is asked for the wrist image and state, ``env_seed`` 0 and the
  non-antipodal quaternion conversion, as ``oft.py`` asks (OpenVLA-OFT's own protocol).

Requires ``pip install vla-eval`` (the ``vla-eval`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vla_eval.model_servers.base import SessionContext
from vla_eval.model_servers.predict import PredictModelServer
from vla_eval.specs import GRIPPER_CLOSE_POS, IMAGE_RGB, LANGUAGE, POSITION_DELTA, ROTATION_AA, STATE_EEF_POS_AA_GRIP

from vla_adp.model import transforms as T
from vla_adp.serve.server import ServerConfig, obs_spec
from vla_adp.serve.validate import RequestError, check_act


class ObservationError(ValueError):
    """A vla-eval observation the policy cannot take; vla-eval answers it with an ERROR message."""


class VlaAdpModelServer(PredictModelServer):
    """vla-eval's ``PredictModelServer`` around a :class:`~vla_adp.policy.Policy`.

    Args:
        policy: the local policy, with its pruner (``policy.new_session()`` per episode).
        config: image-size and instruction limits (as the HTTP server's).
        **kwargs: ``PredictModelServer`` options (``action_ensemble``, ...); ``chunk_size``
            defaults to the policy's chunk, executed open loop as OpenVLA-OFT does.
    """

    def __init__(self, policy, config: ServerConfig = ServerConfig(), **kwargs: Any) -> None:
        kwargs.setdefault("chunk_size", policy.platform.chunk)
        super().__init__(**kwargs)
        self.policy = policy
        self.spec = obs_spec(policy, config)
        self.sessions: dict[str, Any] = {}
        self.libero = policy.platform.name == "libero"
        self.last_info: dict[str, Any] | None = None  # the latest query's info (pruning, timing)

    # -- what the harness asks before an episode -------------------------------------------
    def get_observation_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.spec.n_wrist:
            params["send_wrist_image"] = True
        if self.spec.needs_state or self.policy.platform.eef_pos is not None:
            params["send_state"] = True
        if self.libero:
            params.update(env_seed=0, quat_no_antipodal=True)
        return params

    def get_action_spec(self) -> dict:
        if not self.libero:
            raise NotImplementedError("action spec declared for LIBERO only")  # vla-eval skips the check
        return {"position": POSITION_DELTA, "rotation": ROTATION_AA, "gripper": GRIPPER_CLOSE_POS}

    def get_observation_spec(self) -> dict:
        # LIBERO's camera names as LIBEROBenchmark declares them (the images are taken in order anyway)
        main, wrist = ("agentview", "wrist") if self.libero else ("image", "wrist_image")
        spec = {main: IMAGE_RGB, **({wrist: IMAGE_RGB} if self.spec.n_wrist else {}), "language": LANGUAGE}
        if self.libero and self.spec.needs_state:
            spec["state"] = STATE_EEF_POS_AA_GRIP
        return spec

    # -- episode lifecycle -----------------------------------------------------------------
    async def on_episode_start(self, config: dict[str, Any], ctx: SessionContext) -> None:
        self.sessions[ctx.session_id] = self.policy.new_session()
        await super().on_episode_start(config, ctx)

    async def on_episode_end(self, result: dict[str, Any], ctx: SessionContext) -> None:
        self.sessions.pop(ctx.session_id, None)
        await super().on_episode_end(result, ctx)

    async def on_observation(self, obs: dict[str, Any], ctx: SessionContext) -> None:
        session = self.session(ctx)
        if not ctx.is_first:  # the state after every executed step (the first one follows reset)
            state = self.observation(obs).get("state")
            if state is not None:
                self.policy.record_step(state, session)
        await super().on_observation(obs, ctx)

    def session(self, ctx: SessionContext):
        if ctx.session_id not in self.sessions:  # observations before EPISODE_START: one episode
            self.sessions[ctx.session_id] = self.policy.new_session()
        return self.sessions[ctx.session_id]

    # -- one query -------------------------------------------------------------------------
    def observation(self, obs: Any) -> dict[str, Any]:
        """vla-eval's observation, checked, under our keys."""
        if not isinstance(obs, dict):
            raise ObservationError(f"the observation is a {type(obs).__name__}; expected a dict")
        images = obs.get("images")
        if not isinstance(images, dict) or not images:
            raise ObservationError(f"'images' is {type(images).__name__}; expected a dict of uint8 (H, W, 3) arrays "
                                   f"(the first is the main camera, then {self.spec.n_wrist} wrist camera(s))")
        cams = list(images.values())[: self.spec.n_wrist + 1]
        ours: dict[str, Any] = {"full_image": cams[0], **{f"wrist_image_{i}": c for i, c in enumerate(cams[1:])}}
        state = obs.get("states", obs.get("state"))
        if state is not None:
            ours["state"] = np.asarray(state) if isinstance(state, (list, tuple, np.ndarray)) else state
        ours["instruction"] = obs.get("task_description")
        try:
            return check_act(ours, self.spec).obs
        except RequestError as e:
            raise ObservationError(f"{e.error}; expected {e.expected}") from None

    def predict(self, obs: dict[str, Any], ctx: SessionContext) -> dict[str, Any]:
        session = self.session(ctx)
        try:
            out = self.policy.infer(self.observation(obs), session)
        finally:
            session.trajectory = []  # a refused query must not leave steps behind
        self.last_info = out["info"]
        actions = out["actions"]
        return {"actions": T.libero_gripper(actions) if self.libero else actions}
