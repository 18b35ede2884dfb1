"""Policy server for real robots: OpenVLA-OFT's ``deploy.py`` protocol with per-episode pruning state.

Reference behaviour (moojink/openvla-oft ``vla-scripts/deploy.py``): FastAPI, ``POST /act`` on port 8777, the body is the observation
with numpy arrays in json-numpy form (or ``{"encoded": <JSON string>}``, answered with a JSON
string), the answer is the list of ``chunk`` un-normalised actions. Unchanged OFT clients work as they
are. What we add:

* sessions: ``session_id`` (body) or ``X-Session-Id`` (header) selects one robot's episode state
  (pruner copy + query counter, :mod:`vla_adp.serve.sessions`); ``POST /reset`` starts an episode;
  idle sessions expire. Requests without an id get one anonymous session per client address, which
  starts a new episode when the instruction changes or after ``anonymous_gap_s`` of silence
  (``anonymous="refuse"`` answers them 400 instead).
* ``?info=1`` or ``"return_info": true``: answer ``{"actions": <json-numpy (chunk, dim)>, "info": {...}}``.
* ``"trajectory"``: raw states recorded after each executed step since the last query (path-length
  gating), fed to ``Policy.record_step`` before the query.
* ``GET /health`` (and ``HEAD``) and ``GET /metrics``.
* access control (:mod:`vla_adp.serve.access`): ``Host`` must be allowed (loopback names by
  default), a POST with a foreign ``Origin`` is refused, and with a token every request needs
  ``Authorization: Bearer <token>``.
* bounded time and size (docs/serving.md): headers within ``header_timeout_s`` (the transport,
  :mod:`vla_adp.serve.transport`), the body within ``body_timeout_s`` with no pause longer than
  ``read_timeout_s`` (else 408), at most ``max_body_bytes`` (413), by default just what the largest
  accepted observation needs (:func:`body_limit`).
* ``record_dir`` (``--record-dir``): one overlay video per session episode
  (:mod:`vla_adp.serve.recording`), finished on ``/reset``, expiry or shutdown.
* every bad request gets a 4xx JSON ``{"error", "expected"}`` (``deploy.py`` answers "error");
  an unexpected failure (a bug) gets a 500 JSON and is logged; the server keeps serving.

Requests run one at a time on the model (a lock), so concurrent robots never share state; the event
loop stays free, so ``/health`` answers while a query runs. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vla_adp.serve import numpy_json
from vla_adp.serve.access import LOOPBACK_HOSTS, AccessPolicy, check_bind, is_loopback  # noqa: F401 (re-exported)
from vla_adp.serve.metrics import Metrics
from vla_adp.serve.sessions import SessionFull, SessionStore, anonymous_id
from vla_adp.serve.transport import HEADER_TIMEOUT_S, uvicorn_config
from vla_adp.serve.validate import ObsSpec, RequestError, check_act, flag, parse_json, session_id

log = logging.getLogger("vla_adp.serve")
ROUTES = "POST /act, POST /reset, GET /health, GET /metrics"
DRAIN_LIMIT = 64 << 20  # read (and drop) at most this much of an oversized body before answering 413
DRAIN_SECONDS = 2.0  # ... and for at most this long
BODY_SLACK = 2 << 20  # room beyond the images: state, instruction, trajectory, JSON syntax
CLOSE = {"connection": "close"}


def body_limit(n_images: int, max_side: int) -> int:
    """Bytes the largest accepted observation takes in json-numpy form: ``n_images`` images of
    ``max_side``² × 3 bytes, base64 (4/3), plus :data:`BODY_SLACK`."""
    return n_images * 4 * max_side * max_side + BODY_SLACK  # base64 of 3·side² bytes: 4·side² characters


@dataclass(frozen=True)
class ServerConfig:
    """Limits and session policy of the server.

    Args:
        max_body_bytes: largest request body (413 above); ``None`` = :func:`body_limit` of the
            served model's image count and ``max_image_side`` (a smaller explicit limit is refused:
            it would 413 observations the image limit accepts).
        session_ttl_s: seconds of inactivity after which a session expires.
        max_sessions: most live sessions at once (429 above).
        min_image_side: smallest accepted image height/width.
        max_image_side: largest accepted image height/width.
        max_instruction_chars: longest accepted instruction.
        metrics_window: queries the latency percentiles cover.
        record_dir: write an overlay video of every session episode here; ``None`` = off.
        anonymous: requests without a session id: ``per-address`` (one session per client address,
            with the episode rule of :meth:`~vla_adp.serve.sessions.SessionStore.get_anonymous`) or
            ``refuse`` (400: send a session id).
        anonymous_gap_s: an anonymous client silent this long starts a new episode.
        header_timeout_s: request line and headers must arrive within this (else 408 and close).
        body_timeout_s: the whole body must arrive within this after the headers (else 408).
        read_timeout_s: longest pause between two pieces of the body (else 408).
        access: Host/Origin/token checks (:class:`~vla_adp.serve.access.AccessPolicy`).
    """

    max_body_bytes: int | None = None
    session_ttl_s: float = 600.0
    max_sessions: int = 64
    min_image_side: int = 16
    max_image_side: int = 2048
    max_instruction_chars: int = 2048
    metrics_window: int = 1000
    record_dir: str | None = None
    anonymous: str = "per-address"
    anonymous_gap_s: float = 30.0
    header_timeout_s: float = HEADER_TIMEOUT_S
    body_timeout_s: float = 120.0
    read_timeout_s: float = 10.0
    access: AccessPolicy = AccessPolicy()

    def __post_init__(self) -> None:
        for name in ("session_ttl_s", "max_sessions", "min_image_side", "max_image_side", "max_instruction_chars",
                     "metrics_window", "anonymous_gap_s", "header_timeout_s", "body_timeout_s", "read_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_body_bytes is not None and not self.max_body_bytes > 0:
            raise ValueError(f"ServerConfig.max_body_bytes must be positive or None, got {self.max_body_bytes!r}")
        if self.min_image_side > self.max_image_side:
            raise ValueError(f"ServerConfig.min_image_side {self.min_image_side} > max_image_side {self.max_image_side}")
        if self.anonymous not in ("per-address", "refuse"):
            raise ValueError(f"ServerConfig.anonymous must be 'per-address' or 'refuse', got {self.anonymous!r}")

    def body_bytes(self, n_images: int) -> int:
        """The body limit for a model taking ``n_images`` images (see ``max_body_bytes``)."""
        need = body_limit(n_images, self.max_image_side)
        if self.max_body_bytes is None:
            return need
        if self.max_body_bytes < need:
            raise ValueError(f"a body limit of {self.max_body_bytes} bytes cannot carry {n_images} images of "
                             f"{self.max_image_side}x{self.max_image_side} pixels ({need} bytes in json-numpy form): "
                             "raise --max-body-mb or lower --max-image-side")
        return self.max_body_bytes


def served_inputs(policy) -> dict[str, Any]:
    """``n_images``, ``image_size`` and ``needs_state`` of the served policy: its own ``served_inputs()``
    where it has one (:class:`~vla_adp.pi0_policy.Pi0Policy`), else its model's args (OpenVLA-OFT, OpenVLA)."""
    if hasattr(policy, "served_inputs"):
        return policy.served_inputs()
    a = policy.model.args
    return {"n_images": a.n_images, "image_size": a.image_size, "needs_state": bool(a.use_proprio)}


def obs_spec(policy, config: ServerConfig) -> ObsSpec:
    """What an observation must look like for ``policy``."""
    a = served_inputs(policy)
    return ObsSpec(n_wrist=a["n_images"] - 1, proprio_dim=policy.platform.proprio_dim, needs_state=a["needs_state"],
                   min_side=config.min_image_side, max_side=config.max_image_side,
                   max_instruction_chars=config.max_instruction_chars)


class ServerState:
    """The served policy, its sessions and metrics; every method runs in a worker thread."""

    def __init__(self, policy, config: ServerConfig, clock=time.monotonic):
        self.policy, self.config = policy, config
        self.spec = obs_spec(policy, config)
        self.max_body = config.body_bytes(served_inputs(policy)["n_images"])
        self.recorder = None
        if config.record_dir:
            from vla_adp.serve.recording import SessionRecorder  # pictures only when asked for

            self.recorder = SessionRecorder(config.record_dir, policy)
        self.store = SessionStore(policy.new_session, config.session_ttl_s, config.max_sessions, clock,
                                  on_end=self.recorder.end if self.recorder else None)
        self.metrics = Metrics(config.metrics_window)
        self.lock = threading.Lock()  # one query at a time on the model
        self.started = time.time()

    def act(self, body: bytes, header_sid: str | None, query_info: bool, t0: float, client: str | None = None) -> Response:
        payload, encoded = parse_json(body, self.max_body)
        req = check_act(payload, self.spec, header_sid)
        sid = req.session_id or self._anonymous(client)
        with self.lock:
            if req.session_id is None:
                try:
                    entry, _ = self.store.get_anonymous(sid, req.obs["instruction"], self.config.anonymous_gap_s)
                except SessionFull as e:
                    raise self._full(e) from None
            else:
                entry = self.store.get(sid)
            if entry is None:
                raise RequestError(404, f"unknown session {sid!r} (never started, or expired after "
                                   f"{self.config.session_ttl_s:g} s idle)",
                                   "POST /reset with this session id to start its episode, then POST /act")
            out = self._infer(req, entry.session)
            entry.queries += 1
            if self.recorder is not None:
                self.recorder.add(sid, req.obs, out["info"])
        actions, info = out["actions"], {**jsonable(out["info"]), "session_id": sid}
        self.metrics.query(1e3 * (time.perf_counter() - t0), info)
        result: Any = {"actions": actions, "info": info} if (req.return_info or query_info) else list(actions)
        text = numpy_json.dumps(result, allow_nan=False)
        return Response(numpy_json.dumps(text) if encoded else text, media_type="application/json")

    def _infer(self, req, session) -> dict[str, Any]:
        for state in req.trajectory:
            self.policy.record_step(state, session)
        try:
            return self.policy.infer(req.obs, session)
        except ValueError as e:  # the policy's own input checks (see Policy.inputs)
            raise RequestError(400, f"the policy rejected the observation: {e}", self.spec.fields()) from None
        finally:
            session.trajectory = []  # a failed query must not leave steps behind for the retry

    def _anonymous(self, client: str | None) -> str:
        if self.config.anonymous == "refuse":
            raise RequestError(400, "the request names no session (this server serves no anonymous clients)",
                               "a session id in the session_id field or the X-Session-Id header, started with POST /reset")
        return anonymous_id(client)

    def _full(self, e: SessionFull) -> RequestError:
        return RequestError(429, str(e), f"wait for idle sessions to expire ({self.config.session_ttl_s:g} s) "
                            "or raise --max-sessions")

    def reset(self, body: bytes, header_sid: str | None, client: str | None = None) -> dict[str, Any]:
        payload = parse_json(body)[0] if body.strip() else {}
        extra = sorted(set(payload) - {"session_id"})
        if extra:
            raise RequestError(400, f"unexpected field(s) {extra} in /reset", '{"session_id": "<id>"} or an empty body')
        sid = session_id(payload.get("session_id"), header_sid) or self._anonymous(client)
        with self.lock:
            try:
                created = self.store.start(sid)
            except SessionFull as e:
                raise self._full(e) from None
        return {"session_id": sid, "created": created, "session_ttl_s": self.config.session_ttl_s}

    def close(self) -> None:
        """Finish what is still open (the episode videos of live sessions)."""
        if self.recorder is not None:
            with self.lock:
                self.recorder.close_all()

    def health(self) -> dict[str, Any]:
        p, a = self.policy, served_inputs(self.policy)
        return {"status": "ok", "platform": p.platform.name, "chunk": p.platform.chunk,
                "action_dim": p.platform.action_dim, "proprio_dim": p.platform.proprio_dim,
                "n_images": a["n_images"], "image_size": a["image_size"], "unnorm_key": p.unnorm_key,
                "pruner": getattr(p.pruner_template, "name", None), "live_sessions": self.store.live(),
                "session_ttl_s": self.config.session_ttl_s, "uptime_s": time.time() - self.started}

    def snapshot(self) -> dict[str, Any]:
        return {**self.metrics.snapshot(), "live_sessions": self.store.live(),
                "expired_sessions": self.store.expired_total, "uptime_s": time.time() - self.started}


def jsonable(x: Any) -> Any:
    """``info`` as plain JSON: numpy to Python, tuples to lists, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x if isinstance(x, (str, int, float, bool, type(None))) else repr(x)


class BodyError(RequestError):
    """A body refused part-way (too big, too slow, cut off): answered, then the connection closes."""


async def read_body(request: Request, limit: int, body_timeout: float = 120.0, read_timeout: float = 10.0) -> bytes:
    """The body, refusing anything over ``limit`` bytes (413, without holding it in memory) and any
    body that pauses longer than ``read_timeout`` or takes longer than ``body_timeout`` seconds (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        raise BodyError(400, f"Content-Length is {declared[:40]!r}", "a non-negative integer")
    too_big = BodyError(413, f"request body is larger than the {limit}-byte limit",
                        f"at most {limit} bytes (raise --max-body-mb or --max-image-side, or send smaller images)")
    stream = request.stream().__aiter__()
    if declared is not None and int(declared) > limit:
        # Refuse at once. A client waiting for "100 Continue" sends nothing more; any other gets a short
        # while to send (dropped) so that it reads the answer instead of a reset connection.
        if "100-continue" not in request.headers.get("expect", "").lower():
            await _drain(stream, DRAIN_SECONDS)
        raise too_big
    buf = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body_timeout
    while True:
        wait = min(read_timeout, deadline - loop.time())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), timeout=max(wait, 0.0))
        except StopAsyncIteration:
            return bytes(buf)
        except asyncio.TimeoutError:
            slow = loop.time() >= deadline
            raise BodyError(408, f"request body incomplete after {len(buf)} byte(s): " + (
                f"not received within {body_timeout:g} s" if slow else f"nothing arrived for {read_timeout:g} s"),
                "the whole body sent without pauses (as its Content-Length says)") from None
        except ClientDisconnect:
            raise BodyError(400, f"the client disconnected after {len(buf)} byte(s) of the body",
                            "a complete request") from None
        buf += chunk
        if len(buf) > limit:
            await _drain(stream, DRAIN_SECONDS)
            raise too_big


async def _drain(stream, seconds: float) -> None:
    """Read and drop the rest of the body for at most ``seconds`` and :data:`DRAIN_LIMIT` bytes."""
    seen = 0
    with contextlib.suppress(asyncio.TimeoutError, ClientDisconnect):
        async with asyncio.timeout(seconds):
            async for chunk in stream:
                seen += len(chunk)
                if seen > DRAIN_LIMIT:
                    break


def create_app(policy, config: ServerConfig = ServerConfig(), clock=time.monotonic) -> FastAPI:
    """The FastAPI app serving ``policy`` (a :class:`~vla_adp.policy.Policy`).

    Args:
        policy: the local policy; the server keeps one ``policy.new_session()`` per client session.
        config: limits and session policy.
        clock: monotonic seconds for session expiry (tests pass a controllable one).
    """
    state = ServerState(policy, config, clock)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(state.close)

    app = FastAPI(title="vla-adp policy server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.server = state

    async def body_of(request: Request) -> bytes:
        return await read_body(request, state.max_body, config.body_timeout_s, config.read_timeout_s)

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client else None

    @app.post("/act")
    async def act(request: Request):
        t0 = time.perf_counter()
        body = await body_of(request)
        info = flag(request.query_params.get("info", "0"), "query parameter info")
        return await guarded(state.act, body, request.headers.get("x-session-id"), info, t0, client_of(request))

    @app.post("/reset")
    async def reset(request: Request):
        body = await body_of(request)
        return await guarded(state.reset, body, request.headers.get("x-session-id"), client_of(request))

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return state.health()

    @app.get("/metrics")
    async def metrics():
        return state.snapshot()

    install_error_handlers(app, state)
    app.add_middleware(AccessMiddleware, access=config.access, metrics=state.metrics)
    return app


class AccessMiddleware:
    """Refuse requests :class:`~vla_adp.serve.access.AccessPolicy` does not allow, before any route runs."""

    def __init__(self, app, access: AccessPolicy, metrics: Metrics):
        self.app, self.access, self.metrics = app, access, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            from starlette.datastructures import Headers

            try:
                self.access.check(scope["method"], Headers(scope=scope))
            except RequestError as e:
                self.metrics.error(e.status)
                log.info("%s %s -> %d: %s", scope["method"], scope.get("path"), e.status, e.error)
                await error_response(e, close=True)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error_response(exc: RequestError, close: bool = False) -> Response:
    """The JSON answer ``{"error", "expected"}`` (ASCII-escaped: any text survives), optionally closing."""
    headers = dict(CLOSE) if close else {}
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    return Response(json.dumps(exc.body()), status_code=exc.status, media_type="application/json", headers=headers)


async def guarded(fn, *args):
    """Run ``fn`` in a worker thread; anything but a RequestError becomes a logged 500."""
    try:
        return await run_in_threadpool(fn, *args)
    except RequestError:
        raise
    except Exception as e:
        log.exception("internal error in %s", getattr(fn, "__name__", fn))
        raise RequestError(500, f"internal error: {type(e).__name__}: {e}",
                           "a retry after POST /reset; the server logged the traceback") from None


def install_error_handlers(app: FastAPI, state: ServerState) -> None:
    async def request_error(request: Request, exc: RequestError):
        state.metrics.error(exc.status)
        if exc.status < 500:
            log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.error)
        return error_response(exc, close=isinstance(exc, BodyError))

    async def http_error(request: Request, exc: StarletteHTTPException):
        state.metrics.error(exc.status_code)
        return error_response(RequestError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path[:200]}",
                                           ROUTES))

    async def internal_error(request: Request, exc: Exception):  # backstop; `guarded` catches the rest
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(RequestError(500, f"internal error: {type(exc).__name__}: {exc}", ROUTES))

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


# -- running it ----------------------------------------------------------------------------
class BackgroundServer:
    """uvicorn serving ``app`` in a daemon thread (tests, notebooks, benchmarks).

    ``port=0`` picks a free port; ``url`` says which. Use as a context manager.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets (else Nagle adds ~40 ms)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                                  socket.IPPROTO_TCP)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        import uvicorn

        header_timeout = app.state.server.config.header_timeout_s if hasattr(app.state, "server") else HEADER_TIMEOUT_S
        self.server = uvicorn.Server(uvicorn_config(app, header_timeout, log_level=log_level, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
