"""openpi's websocket policy protocol (``vla-adp serve --protocol openpi``), one connection per robot.

The wire is openpi's (``src/openpi/serving/websocket_policy_server.py`` and the ``openpi-client``
package's ``websocket_client_policy.py``): on connect the server sends its metadata as one msgpack
frame; then every binary frame from the client is an observation dict in msgpack-numpy
(:mod:`vla_adp.serve.msgpack_numpy`) and every answer is a dict with ``actions`` (chunk, action_dim),
``policy_timing`` and ``server_timing`` (``infer_ms``, and ``prev_total_ms``: the previous round
trip), as openpi's server adds them; a text frame is an error (``WebsocketClientPolicy.infer``
raises ``RuntimeError`` with it). ``GET /healthz`` answers ``OK`` as openpi's does.

What we keep from our HTTP server (:mod:`vla_adp.serve.server`): the same validation
(:func:`vla_adp.serve.validate.check_act`) and limits (:class:`~vla_adp.serve.server.ServerConfig`),
one query at a time on the model, metrics and episode videos. What is specific here:

* observation keys: openpi clients name them after their dataset (its LIBERO example sends
  ``observation/image``, ``observation/wrist_image``, ``observation/state``, ``prompt``); a key map
  (default :data:`OPENPI_LIBERO_KEYS`, ``--key-map`` to change it) renames them to ours; our own
  names (``full_image``, ``state``, ``instruction``, ``trajectory``, ...) are accepted as they are.
* sessions: each connection is one robot's episode with its own pruner copy and gate history
  (openpi's ``WebsocketClientPolicy.reset`` sends nothing, so a new episode is a new connection);
  ``{"__ctrl__": "episode_start"}`` also starts one, as openpi's server acknowledges it.
  Connections beyond ``max_sessions`` are refused with HTTP 503 before the handshake.
* answers also carry ``info`` (the pruning statistics of :meth:`vla_adp.policy.Policy.infer`).
* errors: a bad frame gets a text frame with the JSON ``{"error", "expected", "status"}`` and the
  connection stays open; an unexpected failure gets the same and the connection is closed with 1011
  (as openpi's server does, whose session may be half-updated); a frame over the size limit is
  closed by the websocket layer with 1009 ("message too big"). The server keeps serving.
"""

from __future__ import annotations

import dataclasses

import asyncio
import http
import json
import logging
import threading
import time
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import CloseCode

from vla_adp.serve import msgpack_numpy
from vla_adp.serve.metrics import Metrics
from vla_adp.serve.server import ServerConfig, jsonable, obs_spec, served_inputs
from vla_adp.serve.validate import RequestError, check_act

log = logging.getLogger("vla_adp.serve.openpi")

# openpi's LIBERO example client (examples/libero/main.py) -> our observation keys
OPENPI_LIBERO_KEYS = {"observation/image": "full_image", "observation/wrist_image": "wrist_image",
                      "observation/state": "state", "prompt": "instruction"}
CONTROL = "__ctrl__"
CONTROLS = ("episode_start", "episode_end")


def check_key_map(key_map: Any) -> dict[str, str]:
    """A key map ``{client key: our key}``; our keys must be observation fields we read."""
    if not isinstance(key_map, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in key_map.items()):
        raise ValueError(f"the key map must be a JSON object of strings {{client key: our key}}, got {key_map!r}")
    ours = ("full_image", "state", "instruction", "task_description", "trajectory")
    bad = sorted(v for v in key_map.values() if v not in ours and "wrist" not in v)
    if bad:
        raise ValueError(f"key map targets {bad} are not observation fields; expected one of {list(ours)} "
                         "or a key containing 'wrist'")
    if len(set(key_map.values())) != len(key_map):
        raise ValueError(f"key map {key_map} sends two client keys to the same field")
    return dict(key_map)


def rename(payload: dict[str, Any], key_map: dict[str, str]) -> dict[str, Any]:
    """The observation under our names; a field given under two names is refused."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        ours = key_map.get(key, key) if isinstance(key, str) else key
        if ours in out:
            raise RequestError(400, f"field {ours!r} given twice (as {ours!r} and through the key map)",
                               f"one of them; key map: {key_map}")
        out[ours] = value
    return out


class OpenpiServer:
    """The served policy behind openpi's protocol; :meth:`handler` serves one websocket connection.

    Args:
        policy: the local :class:`~vla_adp.policy.Policy`; each connection gets ``policy.new_session()``.
        config: limits (``max_body_bytes`` caps a frame, ``max_sessions`` the open connections).
        key_map: client observation key -> our key (:data:`OPENPI_LIBERO_KEYS` by default).
    """

    def __init__(self, policy, config: ServerConfig = ServerConfig(), key_map: dict[str, str] = OPENPI_LIBERO_KEYS):
        if config.max_body_bytes is None:  # the HTTP server's derived limit, as a plain frame size
            config = dataclasses.replace(config, max_body_bytes=config.body_bytes(served_inputs(policy)["n_images"]))
        self.policy, self.config = policy, config
        self.key_map = check_key_map(key_map)
        self.spec = obs_spec(policy, config)
        self.lock = threading.Lock()  # one query at a time on the model
        self.metrics = Metrics(config.metrics_window)
        self.recorder = None
        if config.record_dir:
            from vla_adp.serve.recording import SessionRecorder  # pictures only when asked for

            self.recorder = SessionRecorder(config.record_dir, policy)
        self.live = 0
        self.opened = 0
        self.started = time.time()

    def metadata(self) -> dict[str, Any]:
        """What the client receives on connect (``WebsocketClientPolicy.get_server_metadata()``)."""
        from vla_adp import __version__

        p, a = self.policy, served_inputs(self.policy)
        return {"server": "vla-adp", "version": __version__, "protocol": "openpi-websocket",
                "platform": p.platform.name, "chunk": p.platform.chunk, "action_dim": p.platform.action_dim,
                "proprio_dim": p.platform.proprio_dim, "n_images": a["n_images"], "image_size": a["image_size"],
                "unnorm_key": p.unnorm_key, "pruner": getattr(p.pruner_template, "name", None),
                "key_map": self.key_map, "observation": self.expected(self.spec.fields()), "controls": list(CONTROLS)}

    # -- one connection --------------------------------------------------------------------
    async def handler(self, ws: ServerConnection) -> None:
        self.live += 1
        self.opened += 1
        sid = f"ws-{self.opened}"
        session = self.policy.new_session()
        log.info("%s: connection from %s", sid, ws.remote_address)
        prev_total_ms = None
        try:
            await ws.send(msgpack_numpy.packb(self.metadata()))
            async for frame in ws:
                t0 = time.monotonic()
                try:
                    reply = await asyncio.to_thread(self.answer, frame, session, sid, prev_total_ms)
                except RequestError as e:
                    self.metrics.error(e.status)
                    log.info("%s: refused a frame (%d): %s", sid, e.status, e.error)
                    await ws.send(json.dumps({**e.body(), "status": e.status}))
                    continue
                except Exception as e:  # noqa: BLE001 - the connection ends, the server does not
                    self.metrics.error(500)
                    log.exception("%s: internal error", sid)
                    await ws.send(json.dumps({"error": f"internal error: {type(e).__name__}: {e}", "status": 500,
                                              "expected": "a new connection (a new episode); the server logged "
                                                          "the traceback"}))
                    await ws.close(CloseCode.INTERNAL_ERROR, "internal error: see the previous frame")
                    return
                await ws.send(reply)
                prev_total_ms = 1e3 * (time.monotonic() - t0)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.live -= 1
            if self.recorder is not None:
                await asyncio.to_thread(self._end_recording, sid)
            log.info("%s: closed", sid)

    def answer(self, frame: bytes | str, session, sid: str, prev_total_ms: float | None) -> bytes:
        """One client frame to the msgpack answer (runs in a worker thread)."""
        t0 = time.perf_counter()
        payload = self.decode(frame)
        if CONTROL in payload:
            return msgpack_numpy.packb(self.control(payload[CONTROL], session, sid))
        obs = rename(payload, self.key_map)
        if "session_id" in obs:
            raise RequestError(400, "session_id is not used over the websocket", "one connection per robot "
                               f'episode: reconnect, or send {{"{CONTROL}": "episode_start"}} to start a new one')
        try:
            req = check_act(obs, self.spec)
        except RequestError as e:
            raise RequestError(e.status, e.error, self.expected(e.expected)) from None
        with self.lock:
            out = self._infer(req, session)
            if self.recorder is not None:
                self.recorder.add(sid, req.obs, out["info"])
        info = jsonable(out["info"])
        infer_ms = 1e3 * (time.perf_counter() - t0)
        self.metrics.query(infer_ms, info)
        timing = info.get("timing_ms", {})
        server_timing = {"infer_ms": infer_ms, **({} if prev_total_ms is None else {"prev_total_ms": prev_total_ms})}
        return msgpack_numpy.packb({
            "actions": out["actions"],
            "policy_timing": {"infer_ms": timing.get("total"), **{f"{k}_ms": v for k, v in timing.items() if k != "total"}},
            "server_timing": server_timing,
            "info": info,
        })

    def expected(self, text: str) -> str:
        """An ``expected`` text of :mod:`vla_adp.serve.validate` in this protocol's terms."""
        if text == self.spec.fields():
            wrist = f"{self.spec.n_wrist} wrist image(s) (keys containing 'wrist')" if self.spec.n_wrist else "no wrist images"
            state = "state" if self.spec.needs_state else "optional state"
            text = (f"full_image and {wrist} as uint8 arrays (H, W, 3), {state} ({self.spec.proprio_dim} finite "
                    f"numbers), instruction (non-empty string); optional: trajectory")
            return f"{text}; client keys renamed by the key map {self.key_map}"
        return text.replace("json-numpy", "msgpack-numpy")

    def decode(self, frame: bytes | str) -> dict[str, Any]:
        if isinstance(frame, str):
            raise RequestError(400, f"a text frame of {len(frame)} characters", "binary frames holding msgpack "
                               "(openpi_client.msgpack_numpy.packb of the observation dict)")
        try:
            payload = msgpack_numpy.unpackb(frame, self.config.max_body_bytes)
        except msgpack_numpy.MsgpackNumpyError as e:
            raise RequestError(400, str(e), msgpack_numpy.EXPECTED) from None
        if not isinstance(payload, dict):
            raise RequestError(400, f"the frame holds a msgpack {type(payload).__name__}",
                               f"a msgpack map (the observation): {self.expected(self.spec.fields())}")
        odd = [k for k in payload if not isinstance(k, str)]
        if odd:
            raise RequestError(400, f"observation keys {odd[:4]!r} are not strings", "msgpack str keys")
        return payload

    def control(self, what: Any, session, sid: str) -> dict[str, Any]:
        """openpi's episode control frames: start/end an episode (reset this connection's session)."""
        if not (isinstance(what, str) and what in CONTROLS):
            return {"__ack__": "ignored"}  # as openpi's server answers unknown controls
        with self.lock:
            session.reset()
            self._end_recording(sid)
        return {"__ack__": what}

    def _infer(self, req, session) -> dict[str, Any]:
        for state in req.trajectory:
            self.policy.record_step(state, session)
        try:
            return self.policy.infer(req.obs, session)
        except ValueError as e:  # the policy's own input checks (see Policy.inputs)
            raise RequestError(400, f"the policy rejected the observation: {e}", self.expected(self.spec.fields())) from None
        finally:
            session.trajectory = []  # a failed query must not leave steps behind for the retry

    def _end_recording(self, sid: str) -> None:
        if self.recorder is not None:
            self.recorder.end(sid)

    # -- HTTP before the handshake ---------------------------------------------------------
    def process_request(self, connection: ServerConnection, request) -> Any:
        """``GET /healthz`` (openpi's probe), ``GET /metrics``; 503 when all session slots are taken."""
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if path == "/metrics":
            body = {**self.metrics.snapshot(), "live_sessions": self.live, "uptime_s": time.time() - self.started}
            return connection.respond(http.HTTPStatus.OK, json.dumps(body) + "\n")
        if self.live >= self.config.max_sessions:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"{self.live} robots connected (limit {self.config.max_sessions}); "
                                      "retry later or raise --max-sessions\n")
        return None

    def serve(self, host: str, port: int, **kwargs):
        """The websockets server (an async context manager), configured as openpi's."""
        return serve(self.handler, host, port, compression=None, max_size=self.config.max_body_bytes,
                     process_request=self.process_request, **kwargs)

    def close(self) -> None:
        if self.recorder is not None:
            with self.lock:
                self.recorder.close_all()


async def serve_forever(server: OpenpiServer, host: str, port: int) -> None:
    async with server.serve(host, port) as ws_server:
        try:
            await ws_server.serve_forever()
        finally:
            server.close()


class BackgroundOpenpiServer:
    """An :class:`OpenpiServer` on its own event loop in a daemon thread (tests, notebooks).

    ``port=0`` picks a free port; ``url`` says which (``ws://host:port``). Use as a context manager.
    """

    def __init__(self, server: OpenpiServer, host: str = "127.0.0.1", port: int = 0):
        self.server, self.host, self.port = server, host, port
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping: asyncio.Future | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self.error = e
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = self.loop.create_future()
        async with self.server.serve(self.host, self.port) as ws_server:
            self.port = ws_server.sockets[0].getsockname()[1]
            self.ready.set()
            await self.stopping
        self.server.close()

    def start(self, timeout: float = 30.0) -> "BackgroundOpenpiServer":
        self.thread.start()
        if not self.ready.wait(timeout) or self.error is not None:
            raise RuntimeError(f"the openpi server did not start on {self.host}:{self.port}: {self.error!r}")
        return self

    def stop(self) -> None:
        if self.loop is not None and self.stopping is not None:
            self.loop.call_soon_threadsafe(lambda: self.stopping.done() or self.stopping.set_result(None))
        self.thread.join(timeout=10)

    def __enter__(self) -> "BackgroundOpenpiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
