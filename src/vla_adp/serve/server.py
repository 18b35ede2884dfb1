"""Policy server for real robots: OpenVLA-OFT's ``deploy.py`` protocol with per-episode pruning state.

Reference behaviour (spec §7.1): FastAPI, ``POST /act`` on port 8777, the body is the observation
with numpy arrays in json-numpy form (or ``{"encoded": <JSON string>}``, answered with a JSON
string), the answer is the list of ``chunk`` un-normalised actions. Unchanged OFT clients work as they
are. What we add:

* sessions: ``session_id`` (body) or ``X-Session-Id`` (header) selects one robot's episode state
  (pruner copy + query counter, :mod:`vla_adp.serve.sessions`); ``POST /reset`` starts an episode;
  idle sessions expire. Requests without an id share a default session.
* ``?info=1`` or ``"return_info": true``: answer ``{"actions": <json-numpy (chunk, dim)>, "info": {...}}``.
* ``"trajectory"``: raw states recorded after each executed step since the last query (path-length
  gating), fed to ``Policy.record_step`` before the query.
* ``GET /health`` and ``GET /metrics``.
* ``record_dir`` (``--record-dir``): one overlay video per session episode
  (:mod:`vla_adp.serve.recording`), finished on ``/reset``, expiry or shutdown.
* every bad request gets a 4xx JSON ``{"error", "expected"}`` (``deploy.py`` answers "error");
  an unexpected failure gets a 500 JSON and is logged; the server keeps serving.

Requests run one at a time on the model (a lock), so concurrent robots never share state; the event
loop stays free, so ``/health`` answers while a query runs. Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from vla_adp.serve import numpy_json
from vla_adp.serve.metrics import Metrics
from vla_adp.serve.sessions import DEFAULT_ID, SessionFull, SessionStore
from vla_adp.serve.validate import ObsSpec, RequestError, check_act, flag, parse_json, session_id

log = logging.getLogger("vla_adp.serve")
ROUTES = "POST /act, POST /reset, GET /health, GET /metrics"
DRAIN_LIMIT = 256 << 20  # read (and drop) at most this much of an oversized body before answering 413


@dataclass(frozen=True)
class ServerConfig:
    """Limits and session policy of the server.

    Args:
        max_body_bytes: largest request body (413 above).
        session_ttl_s: seconds of inactivity after which a session expires.
        max_sessions: most live sessions at once (429 above).
        min_image_side: smallest accepted image height/width.
        max_image_side: largest accepted image height/width.
        max_instruction_chars: longest accepted instruction.
        metrics_window: queries the latency percentiles cover.
        record_dir: write an overlay video of every session episode here; ``None`` = off.
    """

    max_body_bytes: int = 16 << 20
    session_ttl_s: float = 600.0
    max_sessions: int = 64
    min_image_side: int = 16
    max_image_side: int = 2048
    max_instruction_chars: int = 2048
    metrics_window: int = 1000
    record_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "session_ttl_s", "max_sessions", "min_image_side", "max_image_side",
                     "max_instruction_chars", "metrics_window"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.min_image_side > self.max_image_side:
            raise ValueError(f"ServerConfig.min_image_side {self.min_image_side} > max_image_side {self.max_image_side}")


def obs_spec(policy, config: ServerConfig) -> ObsSpec:
    """What an observation must look like for ``policy``."""
    a = policy.model.args
    return ObsSpec(n_wrist=a.n_images - 1, proprio_dim=policy.platform.proprio_dim, needs_state=bool(a.use_proprio),
                   min_side=config.min_image_side, max_side=config.max_image_side,
                   max_instruction_chars=config.max_instruction_chars)


class ServerState:
    """The served policy, its sessions and metrics; every method runs in a worker thread."""

    def __init__(self, policy, config: ServerConfig, clock=time.monotonic):
        self.policy, self.config = policy, config
        self.spec = obs_spec(policy, config)
        self.recorder = None
        if config.record_dir:
            from vla_adp.serve.recording import SessionRecorder  # pictures only when asked for

            self.recorder = SessionRecorder(config.record_dir, policy)
        self.store = SessionStore(policy.new_session, config.session_ttl_s, config.max_sessions, clock,
                                  on_end=self.recorder.end if self.recorder else None)
        self.metrics = Metrics(config.metrics_window)
        self.lock = threading.Lock()  # one query at a time on the model
        self.started = time.time()

    def act(self, body: bytes, header_sid: str | None, query_info: bool, t0: float) -> Response:
        payload, encoded = parse_json(body, self.config.max_body_bytes)
        req = check_act(payload, self.spec, header_sid)
        sid = req.session_id or DEFAULT_ID
        with self.lock:
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

    def reset(self, body: bytes, header_sid: str | None) -> dict[str, Any]:
        payload = parse_json(body)[0] if body.strip() else {}
        extra = sorted(set(payload) - {"session_id"})
        if extra:
            raise RequestError(400, f"unexpected field(s) {extra} in /reset", '{"session_id": "<id>"} or an empty body')
        sid = session_id(payload.get("session_id"), header_sid) or DEFAULT_ID
        with self.lock:
            try:
                created = self.store.start(sid)
            except SessionFull as e:
                raise RequestError(429, str(e), "wait for idle sessions to expire "
                                   f"({self.config.session_ttl_s:g} s) or raise --max-sessions") from None
        return {"session_id": sid, "created": created, "session_ttl_s": self.config.session_ttl_s}

    def close(self) -> None:
        """Finish what is still open (the episode videos of live sessions)."""
        if self.recorder is not None:
            with self.lock:
                self.recorder.close_all()

    def health(self) -> dict[str, Any]:
        p, a = self.policy, self.policy.model.args
        return {"status": "ok", "platform": p.platform.name, "chunk": p.platform.chunk,
                "action_dim": p.platform.action_dim, "proprio_dim": p.platform.proprio_dim,
                "n_images": a.n_images, "image_size": a.image_size, "unnorm_key": p.unnorm_key,
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


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes without holding it in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(400, f"Content-Length is {declared!r}", "a non-negative integer")
    too_big = RequestError(413, f"request body is larger than the {limit}-byte limit",
                           f"at most {limit} bytes (raise --max-body-mb, or send smaller images)")
    buf, seen = bytearray(), 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit or (declared is not None and int(declared) > limit):
            if seen > DRAIN_LIMIT:
                break  # give up draining; the connection closes after the answer
            continue  # keep reading so the client gets to read our answer
        buf += chunk
    if seen > limit or (declared is not None and int(declared) > limit):
        raise too_big
    return bytes(buf)


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

    @app.post("/act")
    async def act(request: Request):
        t0 = time.perf_counter()
        body = await read_body(request, config.max_body_bytes)
        info = flag(request.query_params.get("info", "0"), "query parameter info")
        return await guarded(state.act, body, request.headers.get("x-session-id"), info, t0)

    @app.post("/reset")
    async def reset(request: Request):
        body = await read_body(request, config.max_body_bytes)
        return await guarded(state.reset, body, request.headers.get("x-session-id"))

    @app.get("/health")
    async def health():
        return state.health()

    @app.get("/metrics")
    async def metrics():
        return state.snapshot()

    install_error_handlers(app, state)
    return app


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
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Request, exc: StarletteHTTPException):
        state.metrics.error(exc.status_code)
        return JSONResponse({"error": f"{exc.detail}: {request.method} {request.url.path}", "expected": ROUTES},
                            status_code=exc.status_code)

    async def internal_error(request: Request, exc: Exception):  # backstop; `guarded` catches the rest
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}", "expected": ROUTES},
                            status_code=500)

    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)


# -- running it ----------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback bind unless asked for explicitly: the server has no authentication."""
    if not is_loopback(host) and not allow_remote:
        raise ValueError(f"--host {host} would accept connections from other machines, and the server has no "
                         "authentication; pass --allow-remote to do it anyway (only on a trusted network), "
                         "or keep the default 127.0.0.1")


class BackgroundServer:
    """uvicorn serving ``app`` in a daemon thread (tests, notebooks, benchmarks).

    ``port=0`` picks a free port; ``url`` says which. Use as a context manager.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on such sockets (else Nagle adds ~40 ms)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM,
                                  socket.IPPROTO_TCP)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
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
