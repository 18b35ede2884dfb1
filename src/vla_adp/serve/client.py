"""``RemotePolicy``: the local :class:`~vla_adp.policy.Policy` interface, answered by a policy server.

``infer(obs) -> {"actions", "info"}``, ``reset()`` and ``record_step(state)`` behave as the local
policy's, so the LIBERO and Meta-World runners drive a remote GPU unchanged. Each instance is one
session (one robot): ``reset()`` starts its episode on the server, and the states given to
``record_step`` since the previous query travel with the next ``infer`` (field ``trajectory``), so
path-length gating sees the same path as it would locally. Arrays travel in json-numpy form, bit-exact.

Like the local policy, ``infer`` ignores observation keys the policy does not read (the server itself
refuses unknown fields).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import numpy as np

from vla_adp.constants import Platform, get_platform
from vla_adp.serve import numpy_json


class RemotePolicyError(RuntimeError):
    """The server refused a request or failed; carries its status and message."""

    def __init__(self, status: int, error: str, expected: str = ""):
        super().__init__(f"policy server answered {status}: {error}" + (f" (expected: {expected})" if expected else ""))
        self.status, self.error, self.expected = status, error, expected


class RemotePolicy:
    """A policy served by ``vla-adp serve``.

    Args:
        url: server address, e.g. ``http://127.0.0.1:8777``.
        session_id: this robot's session; default a fresh random id (never the shared default session).
        timeout: seconds per HTTP request.
        transport: optional httpx transport (e.g. retries); default a plain connection pool.
        token: the server's shared token (sent as ``Authorization: Bearer``); default ``$VLA_ADP_TOKEN``.
    """

    def __init__(self, url: str, session_id: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None, token: str | None = None):
        self.url = url.rstrip("/")
        self.session_id = session_id or uuid.uuid4().hex
        token = token or os.environ.get("VLA_ADP_TOKEN") or None
        headers = {"authorization": f"Bearer {token}"} if token else None
        self.http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, headers=headers)
        self.pending: list[np.ndarray] = []
        self.started = False
        self._health: dict[str, Any] | None = None

    # -- the Policy interface ----------------------------------------------------------------
    def reset(self) -> None:
        """Start a new episode for this session on the server."""
        self._post("/reset", {"session_id": self.session_id})
        self.pending, self.started = [], True

    def record_step(self, state: np.ndarray) -> None:
        """Remember the raw state after an executed step; sent with the next query."""
        self.pending.append(np.asarray(state, np.float64).copy())

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """One action chunk ``(chunk, action_dim)`` and the server-side ``info`` of the query."""
        if not self.started:
            self.reset()
        payload = {k: v for k, v in obs.items() if k in ("full_image", "state", "instruction", "task_description")
                   or "wrist" in k}
        payload.update(session_id=self.session_id, return_info=True)
        if self.pending:
            payload["trajectory"] = self.pending
        out = self._post("/act", payload)
        self.pending = []
        return {"actions": np.array(out["actions"]), "info": out["info"]}

    # -- server facts ------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._get("/health")

    def metrics(self) -> dict[str, Any]:
        return self._get("/metrics")

    @property
    def platform(self) -> Platform:
        """The served checkpoint's platform (from ``/health``, fetched once)."""
        if self._health is None:
            self._health = self.health()
        return get_platform(self._health["platform"])

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RemotePolicy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- HTTP --------------------------------------------------------------------------------
    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        body = numpy_json.dumps(payload, allow_nan=False)
        r = self.http.post(path, content=body, headers={"content-type": "application/json"})
        return self._decode(r)

    def _get(self, path: str) -> Any:
        return self._decode(self.http.get(path))

    @staticmethod
    def _decode(r: httpx.Response) -> Any:
        try:
            data = numpy_json.loads(r.content)
        except ValueError:
            raise RemotePolicyError(r.status_code, f"non-JSON answer {r.text[:200]!r}") from None
        if r.status_code >= 400:
            err = data if isinstance(data, dict) else {}
            raise RemotePolicyError(r.status_code, str(err.get("error", data)), str(err.get("expected", "")))
        return data
