"""The policy server as a hostile or careless client meets it, on real loopback sockets.

A catalogue of malformed-request classes (bodies, headers, request lines, access, transport) is sent
as raw bytes over TCP to one uvicorn server (short timeouts, so stalls resolve in about a second):
every class must get a 4xx answer (or, for a peer that hangs up itself, nothing) and no 5xx, and the
server must still serve a valid query afterwards. Hypothesis then draws classes and their variations
again. Separate small servers check the token, the anonymous-session policy and the session cap.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time

import httpx
import json_numpy
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_obs
from vla_adp.policy import Policy
from vla_adp.pruning.registry import build_pruner
from vla_adp.serve.access import AccessPolicy, host_name
from vla_adp.serve.client import RemotePolicy, RemotePolicyError
from vla_adp.serve.server import BackgroundServer, ServerConfig, body_limit, create_app

MAX_SIDE = 512
LIMIT = body_limit(2, MAX_SIDE)
HEADER_S, READ_S, BODY_S = 1.0, 1.0, 2.5
TOKEN = "s3cret-token-for-tests"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class ErrorLog(logging.Handler):
    """Collects ERROR records of the server's loggers (a traceback logged is a failure too)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
    return Policy.load(tiny_ckpt, pruner=build_pruner("adp", keep_ratio=0.25, displacement="path"), dtype=torch.float32)


@pytest.fixture(scope="module")
def errors():
    handler = ErrorLog()
    loggers = [logging.getLogger(n) for n in ("vla_adp.serve", "uvicorn.error", "uvicorn")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def server(policy, clock, errors):
    config = ServerConfig(session_ttl_s=100.0, max_sessions=32, max_image_side=MAX_SIDE, header_timeout_s=HEADER_S,
                          read_timeout_s=READ_S, body_timeout_s=BODY_S, anonymous_gap_s=30.0)
    with BackgroundServer(create_app(policy, config, clock=clock)) as srv:
        yield srv


# -- raw HTTP ----------------------------------------------------------------------------------
def http_request(method="POST", path="/act", body=b"", headers=None, host="127.0.0.1", version="HTTP/1.1",
                 length=True) -> bytes:
    head = [f"{method} {path} {version}".encode()]
    if host is not None:
        head.append(b"Host: " + (host.encode("latin-1") if isinstance(host, str) else host))
    if length:
        head.append(b"Content-Length: %d" % len(body))
    for k, v in (headers or {}).items():
        head.append((k.encode("latin-1") if isinstance(k, str) else k) + b": "
                    + (v.encode("latin-1") if isinstance(v, str) else v))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def json_request(obj, path="/act", **kw) -> bytes:
    body = obj if isinstance(obj, bytes) else json.dumps(obj, default=json_numpy.default).encode()
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return http_request("POST", path, body, headers, **kw)


def read_status(sock: socket.socket, timeout: float = 15.0) -> int | None:
    """The status of the answer, or None when the server closed without one."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    while data.startswith(b"HTTP/1.1 100"):  # an interim "100 Continue": the answer follows
        data = data.split(b"\r\n\r\n", 1)[1]
        try:
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    if not data.startswith(b"HTTP/1."):
        return None
    status = int(data.split(b" ", 2)[1])
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    try:
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    if 400 <= status < 600 and length:
        out = json.loads(rest[:length])
        assert set(out) == {"error", "expected"} and out["error"] and out["expected"], out
    return status


def exchange(url_port: int, steps) -> int | None:
    """Send ``steps`` (bytes, or a float = seconds to pause, or None = half-close) and read the answer."""
    with socket.create_connection(("127.0.0.1", url_port), timeout=15) as sock:
        try:
            for step in steps:
                if isinstance(step, float):
                    time.sleep(step)
                elif step is None:
                    sock.shutdown(socket.SHUT_WR)
                else:
                    sock.sendall(step)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server answered and closed before we finished sending
        return read_status(sock)


# -- the catalogue -----------------------------------------------------------------------------
OBS = make_obs(9)
IMG = np.zeros((224, 224, 3), np.uint8)
NP = {"__numpy__": "AAECAw==", "dtype": "|u1", "shape": [4]}


def obs(**changes):
    o = dict(OBS)
    o.update(changes)
    return {k: v for k, v in o.items() if v is not None}


def dumps_raw(o) -> str:
    return json.dumps(o, default=json_numpy.default)


def junk(rng: random.Random, n: int = 8) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, n + 1)))


def word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randrange(1, 10)))


# name -> (make(rng) -> steps, allowed statuses; None in the set = the server may close without answering)
CLASSES: dict[str, tuple] = {}
SLOW: set[str] = set()  # classes that wait for a timeout: run once, not fuzzed


def case(name, allowed=frozenset(range(400, 500)), slow=False):
    def register(fn):
        assert name not in CLASSES, name
        CLASSES[name] = (fn, frozenset(allowed))
        if slow:
            SLOW.add(name)
        return fn
    return register


def body_case(name, make, fragment=None, status=400, path="/act"):
    """A class whose request is a JSON body: ``make(rng)`` gives the object (or raw bytes)."""
    def steps(rng):
        return [json_request(make(rng), path=path)]
    case(name, {status})(steps)


# bodies: JSON and observation
for name, make in {
    "not json": lambda r: b"hello" + junk(r),
    "truncated json": lambda r: b'{"full_image": ',
    "bad utf-8": lambda r: b'{"instruction": "\xff\xfe' + junk(r) + b'"}',
    "empty body": lambda r: b"",
    "whitespace body": lambda r: b"   \n\t ",
    "json null": lambda r: b"null",
    "json number": lambda r: str(r.randrange(10**6)).encode(),
    "json string": lambda r: json.dumps(word(r)).encode(),
    "json true": lambda r: b"true",
    "top-level list": lambda r: b"[1, 2]",
    "deep nesting": lambda r: b"[" * 100000 + b"]" * 100000,
    "deep object nesting": lambda r: b'{"a":' * 50000 + b"1" + b"}" * 50000,
    "trailing garbage": lambda r: json.dumps({"a": 1}).encode() + b"}" + junk(r),
    "nul byte in json": lambda r: b'{"instruction": "a\x00b"}',
    "lone surrogate instruction": lambda r: dumps_raw(obs(instruction="\ud800" + word(r))).encode(),
    "lone low surrogate instruction": lambda r: dumps_raw(obs(instruction=word(r) + "\udfff")).encode(),
    "surrogate task_description": lambda r: dumps_raw({**obs(instruction=None), "task_description": "\ud83d"}).encode(),
    "surrogate in a key": lambda r: dumps_raw(obs(**{"\ud800": 1})).encode(),
    "surrogate session id": lambda r: dumps_raw(obs(session_id="\ud800")).encode(),
    "surrogate inside encoded": lambda r: dumps_raw({"encoded": dumps_raw(obs(instruction="\udc00"))}).encode(),
    "missing image": lambda r: obs(full_image=None),
    "missing state": lambda r: obs(state=None),
    "missing instruction": lambda r: obs(instruction=None),
    "extra field": lambda r: obs(**{word(r) + "_x": 1}),
    "no wrist image": lambda r: obs(wrist_image=None),
    "two wrist images": lambda r: obs(left_wrist=IMG),
    "both instruction keys": lambda r: obs(task_description="x"),
    "image float": lambda r: obs(full_image=IMG.astype(np.float32)),
    "image uint16": lambda r: obs(full_image=IMG.astype(np.uint16)),
    "image bool": lambda r: obs(full_image=IMG.astype(bool)),
    "image 2-d": lambda r: obs(full_image=IMG[..., 0]),
    "image 4-d": lambda r: obs(full_image=IMG[None]),
    "image 4 channels": lambda r: obs(wrist_image=np.zeros((224, 224, 4), np.uint8)),
    "image 0x0": lambda r: obs(full_image=np.zeros((0, 0, 3), np.uint8)),
    "image too small": lambda r: obs(full_image=np.zeros((8, 224, 3), np.uint8)),
    "image too large": lambda r: obs(full_image=np.zeros((600, 32, 3), np.uint8)),
    "image huge shape, few bytes": lambda r: obs(full_image={**NP, "shape": [100000, 100000, 3]}),
    "image shape overflow": lambda r: obs(full_image={**NP, "shape": [2**62, 2**62, 3]}),
    "image shape of 10 dims": lambda r: obs(full_image={**NP, "shape": [1] * 9 + [4]}),
    "image shape a string": lambda r: obs(full_image={**NP, "shape": "224"}),
    "image shape floats": lambda r: obs(full_image={**NP, "shape": [2.0, 2.0]}),
    "image as list": lambda r: obs(full_image=[[0, 0, 0]]),
    "image as string": lambda r: obs(full_image=word(r) + ".png"),
    "image as null wrist": lambda r: {**obs(), "wrist_image": None},
    "image scalar": lambda r: obs(full_image=np.uint8(3)),
    "image as object": lambda r: obs(full_image={"a": 1}),
    "bad base64": lambda r: obs(full_image={**NP, "__numpy__": "@@@@"}),
    "base64 not a string": lambda r: obs(full_image={**NP, "__numpy__": 12}),
    "wrong byte count": lambda r: obs(full_image={**NP, "shape": [224, 224, 3]}),
    "object dtype": lambda r: obs(full_image={**NP, "dtype": "|O"}),
    "unicode dtype": lambda r: obs(full_image={**NP, "dtype": "<U1"}),
    "void dtype": lambda r: obs(full_image={**NP, "dtype": "|V4"}),
    "datetime dtype": lambda r: obs(full_image={**NP, "dtype": "<M8[s]"}),
    "structured dtype": lambda r: obs(full_image={**NP, "dtype": [["a", "<i4"]]}),
    "unknown dtype": lambda r: obs(full_image={**NP, "dtype": "x9"}),
    "json-numpy extra key": lambda r: obs(full_image={**NP, "order": "F"}),
    "json-numpy missing shape": lambda r: obs(full_image={"__numpy__": "AAAA", "dtype": "|u1"}),
    "negative shape": lambda r: obs(full_image={**NP, "shape": [-1]}),
    "state nan": lambda r: obs(state=np.array([np.nan] + [0.0] * 7)),
    "state NaN literal": lambda r: dumps_raw(obs(state=None))[:-1].encode() + b', "state": [NaN,0,0,0,0,0,0,0]}',
    "state Infinity literal": lambda r: dumps_raw(obs(state=None))[:-1].encode() + b', "state": [0,0,0,0,0,0,0,-Infinity]}',
    "state 1e999": lambda r: dumps_raw(obs(state=None))[:-1].encode() + b', "state": [1e999,0,0,0,0,0,0,0]}',
    "state inf in a list": lambda r: obs(state=[float("inf")] + [0.0] * 7),
    "state wrong length": lambda r: obs(state=np.zeros(r.choice([0, 1, 7, 9, 100]))),
    "state 2-d": lambda r: obs(state=np.zeros((1, 8))),
    "state string": lambda r: obs(state="0 0 0"),
    "state null": lambda r: {**obs(), "state": None},
    "state object": lambda r: obs(state={"x": 1}),
    "state nested list": lambda r: obs(state=[[0.0] * 8]),
    "state list of strings": lambda r: obs(state=["0"] * 8),
    "state list with bools": lambda r: obs(state=[True] * 8),
    "state bools": lambda r: obs(state=np.ones(8, bool)),
    "state complex": lambda r: obs(state=np.zeros(8, np.complex64)),
    "state huge int": lambda r: obs(state=[10**400] + [0] * 7),
    "instruction empty": lambda r: obs(instruction=""),
    "instruction blank": lambda r: obs(instruction=" \t\n "),
    "instruction number": lambda r: obs(instruction=r.randrange(100)),
    "instruction list": lambda r: obs(instruction=["pick"]),
    "instruction null": lambda r: {**obs(), "instruction": None},
    "instruction too long": lambda r: obs(instruction="a" * (2049 + r.randrange(5000))),
    "encoded with extras": lambda r: {"encoded": "{}", "session_id": "a"},
    "encoded not a string": lambda r: {"encoded": {"a": 1}},
    "encoded null": lambda r: {"encoded": None},
    "encoded empty string": lambda r: {"encoded": ""},
    "encoded not json": lambda r: {"encoded": "{nope" + word(r)},
    "encoded a list": lambda r: {"encoded": "[]"},
    "encoded twice": lambda r: {"encoded": json.dumps({"encoded": dumps_raw(obs())})},
    "encoded bad array": lambda r: {"encoded": dumps_raw(obs(state=np.zeros(3)))},
    "session id chars": lambda r: obs(session_id="a b/c"),
    "session id empty": lambda r: obs(session_id=""),
    "session id long": lambda r: obs(session_id="a" * 129),
    "session id number": lambda r: obs(session_id=7),
    "session id list": lambda r: obs(session_id=["a"]),
    "session id non-ascii": lambda r: obs(session_id="robot-é"),
    "return_info string": lambda r: obs(return_info="maybe"),
    "return_info number": lambda r: obs(return_info=2),
    "return_info null": lambda r: {**obs(), "return_info": None},
    "trajectory not a list": lambda r: obs(trajectory=3),
    "trajectory object": lambda r: obs(trajectory={"a": [0] * 8}),
    "trajectory of nulls": lambda r: obs(trajectory=[None]),
    "trajectory bad state": lambda r: obs(trajectory=[np.zeros(8), np.zeros(2)]),
    "trajectory 2-d wrong width": lambda r: obs(trajectory=np.zeros((3, 5))),
    "trajectory nan": lambda r: obs(trajectory=[np.full(8, np.inf)]),
    "trajectory too long": lambda r: obs(trajectory=np.zeros((4097, 8))),
    "unknown session": lambda r: obs(session_id="nobody-" + word(r)),
}.items():
    body_case(name, make, status=404 if name == "unknown session" else 400)

for name, make in {
    "reset list body": lambda r: b"[1]",
    "reset not json": lambda r: b"{oops" + junk(r),
    "reset extra field": lambda r: {"session_id": "x", word(r) + "_y": 1},
    "reset bad session id": lambda r: {"session_id": "a b"},
    "reset session id number": lambda r: {"session_id": 5},
    "reset surrogate session id": lambda r: b'{"session_id": "\\ud800"}',
    "reset deep nesting": lambda r: b"[" * 50000,
}.items():
    body_case(name, make, path="/reset")


# headers, request line, routes, access
def headered(name, allowed, **kw):
    """A class: an otherwise empty POST /act (so a request that gets through still fails with 400)."""
    def steps(rng):
        kw2 = {k: (v(rng) if callable(v) else v) for k, v in kw.items()}
        if "headers" in kw2:
            kw2["headers"] = {h: (v(rng) if callable(v) else v) for h, v in kw2["headers"].items()}
        return [http_request(**{"body": b"", **kw2})]
    case(name, allowed)(steps)


BAD_REQ = {400}
headered("content-length not a number", BAD_REQ, length=False, headers={"Content-Length": "abc"})
headered("content-length negative", BAD_REQ, length=False, headers={"Content-Length": "-1"})
headered("content-length plus sign", BAD_REQ, length=False, headers={"Content-Length": "+5"})
headered("content-length twice, different", BAD_REQ, length=False,
         headers={"Content-Length": "0", b"content-length": "5"})
headered("content-length non-ascii digits", BAD_REQ, length=False, headers={"Content-Length": "\xb2"})
headered("transfer-encoding gzip", BAD_REQ, length=False, headers={"Transfer-Encoding": "gzip"})
headered("missing host (HTTP/1.1)", BAD_REQ, host=None)
headered("missing host (HTTP/1.0)", BAD_REQ, host=None, version="HTTP/1.0")
headered("unknown HTTP version", {400, 505, None}, version="HTTP/9.9")
headered("header name with a space", BAD_REQ, headers={"Bad Header": "x"})
headered("header value with a NUL", BAD_REQ, headers={"X-Thing": "a\x00b"})
headered("header value with a newline", BAD_REQ, headers={"X-Thing": "a\nb: c"})
headered("header too large", BAD_REQ, headers={"X-Big": lambda r: "a" * (20000 + r.randrange(1000))})
headered("too many headers", BAD_REQ, headers={f"X-H{i}": "v" * 20 for i in range(1000)})
headered("host of another site", {403}, host=lambda r: f"{word(r)}.example.com")
headered("dns rebinding host", {403}, host=lambda r: f"127.0.0.1.{word(r)}.example:8777")
headered("localhost lookalike", {403}, host="localhost.evil.example")
headered("empty host", {403}, host="")
headered("host with userinfo", {403}, host="evil@127.0.0.1")
headered("cross-origin post", {403}, headers={"Origin": lambda r: f"http://{word(r)}.example"})
headered("null origin", {403}, headers={"Origin": "null"})
headered("loopback page origin", {403}, headers={"Origin": "http://127.0.0.1:8080"})
headered("cross-origin text/plain reset", {403}, path="/reset",
         headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
headered("cross-origin form post", {403}, headers={"Origin": "http://evil.example",
                                                   "Content-Type": "application/x-www-form-urlencoded"})
headered("session header bad chars", BAD_REQ, headers={"X-Session-Id": "a/b"})
headered("session header too long", BAD_REQ, headers={"X-Session-Id": "s" * 200})
headered("session header empty", BAD_REQ, headers={"X-Session-Id": ""})
headered("session header non-ascii", BAD_REQ, headers={"X-Session-Id": "r\xe9"})
headered("info query not a flag", BAD_REQ, path="/act?info=perhaps")
headered("info query surrogate", BAD_REQ, path="/act?info=%ED%A0%80")
headered("unknown route", {404}, path=lambda r: "/" + word(r))
headered("path traversal", {404}, path="/../../etc/passwd")
headered("encoded NUL in path", {404}, path="/act%00")
headered("very long path", {400, 404, 414}, path="/" + "a" * 12000)
headered("non-ascii path", BAD_REQ, path="/act\xff")
headered("absolute-form to another host", {400, 403, 404}, path="http://evil.example/act")
headered("asterisk target", {400, 404, 405}, path="*", method="OPTIONS")
for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
    headered(f"{method} /act", {405}, method=method)
headered("GET /reset", {405}, method="GET", path="/reset")
headered("POST /health", {405}, path="/health")
headered("DELETE /metrics", {405}, method="DELETE", path="/metrics")
headered("TRACE /act", {405}, method="TRACE")
headered("unknown method", {400, 405}, method="BREW")
headered("lower-case method", {400, 405}, method="post")
headered("websocket upgrade on /act", {400, 404, 405},
         headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZQ==",
                  "Sec-WebSocket-Version": "13"})
headered("h2c upgrade", BAD_REQ, headers={"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings",
                                          "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"})
headered("expect 100-continue, too big", {413, 417}, length=False,
         headers={"Expect": "100-continue", "Content-Length": str(LIMIT + 1)})
case("declared 50 MB, sent nothing", {413}, slow=True)(lambda rng: [http_request(length=False, headers={"Content-Length": str(50 << 20)})])
headered("declared 10^30 bytes", {400, 413}, length=False, headers={"Content-Length": "1" + "0" * 30})
headered("wrong content type", BAD_REQ, headers={"Content-Type": "image/png"})


@case("garbage request line")
def _(rng):
    return [b"GARBAGE" + junk(rng).replace(b"\n", b"") + b"\r\n\r\n"]


@case("request line without target")
def _(rng):
    return [b"GET\r\nHost: 127.0.0.1\r\n\r\n"]


@case("http/2 preface")
def _(rng):
    return [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]


@case("tls client hello", {400, None})
def _(rng):
    return [bytes.fromhex("16030100a5010000a10303") + junk(rng, 32)]


@case("binary junk", {400, None})
def _(rng):
    return [bytes(rng.randrange(256) for _ in range(64)) + b"\r\n\r\n"]


@case("bare LF line endings", {200, 400})  # h11 accepts bare LF; an empty body is then refused... or served
def _(rng):
    return [b"POST /act HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 2\n\n{}"]


@case("obsolete line folding", BAD_REQ)
def _(rng):
    return [b"POST /act HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n c\r\nContent-Length: 0\r\n\r\n"]


@case("bad chunk size")
def _(rng):
    return [http_request(body=b"zz\r\nabc\r\n0\r\n\r\n", length=False, headers={"Transfer-Encoding": "chunked"})]


@case("chunk longer than declared")
def _(rng):
    return [http_request(body=b"2\r\nabcdef\r\n0\r\n\r\n", length=False, headers={"Transfer-Encoding": "chunked"})]


@case("chunked oversized body", {413})
def _(rng):
    piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    return [http_request(body=b"", length=False, headers={"Transfer-Encoding": "chunked"})] + [piece] * 6 + [b"0\r\n\r\n"]


@case("oversized body", {413})
def _(rng):
    return [json_request(b"{" + b" " * LIMIT + b"}")]


@case("pipelined: bad request after a good one", {200, 400})
def _(rng):
    return [http_request("GET", "/health", length=False) + b"NOT HTTP\r\n\r\n"]


# transport: stalls and hang-ups (each waits for a timeout, or for the peer to go)
@case("silent connection", {408, None}, slow=True)
def _(rng):
    return [HEADER_S + 1.0]


@case("partial request line, then silence", {408, None}, slow=True)
def _(rng):
    return [b"POST /ac", HEADER_S + 1.0]


@case("partial headers, then silence", {408, None}, slow=True)
def _(rng):
    return [b"POST /act HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le", HEADER_S + 1.0]


@case("slowloris headers", {408, None}, slow=True)
def _(rng):
    steps = []
    for b in http_request(length=False, headers={"X-Slow": "x" * 20})[:40]:
        steps += [bytes([b]), 0.05]
    return steps


@case("declared 3 MB, sent 10 bytes", {408}, slow=True)
def _(rng):
    return [http_request(length=False, headers={"Content-Length": str(3 << 20)}) + b"0123456789"]


@case("declared 50 MB, sent 10 bytes", {413}, slow=True)
def _(rng):
    return [http_request(length=False, headers={"Content-Length": str(50 << 20)}) + b"0123456789"]


@case("body trickle past the body deadline", {408}, slow=True)
def _(rng):
    steps = [http_request(length=False, headers={"Content-Length": "1000"})]
    for _ in range(int(BODY_S / 0.5) + 3):
        steps += [b"{", 0.5]
    return steps


@case("transfer-encoding and content-length, no chunks", {400, 408}, slow=True)  # h11: chunked wins
def _(rng):
    return [http_request(length=False, headers={"Transfer-Encoding": "chunked", "Content-Length": "3"})]


@case("chunked body, then silence", {408}, slow=True)
def _(rng):
    return [http_request(body=b"5\r\n{\"a\":\r\n", length=False, headers={"Transfer-Encoding": "chunked"})]


@case("hang-up mid-body", {None, 400}, slow=True)
def _(rng):
    return [http_request(length=False, headers={"Content-Length": "100"}) + b"{\"full", None]


@case("hang-up mid-headers", {None, 400}, slow=True)
def _(rng):
    return [b"POST /act HTTP/1.1\r\nHost: 127.", None]


@case("keep-alive, then partial second request", {200, 408, None}, slow=True)
def _(rng):
    return [http_request("GET", "/health", length=False), b"POST /act HTTP/1.1\r\nHo", HEADER_S + 6.0]


FAST = sorted(set(CLASSES) - SLOW)


def run_class(server, name: str, seed: int) -> int | None:
    make, allowed = CLASSES[name]
    status = exchange(server.port, make(random.Random(seed)))
    assert status in allowed and (status is None or status < 500), (name, seed, status)
    return status


def assert_serving(server, policy):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/health").json()["status"] == "ok"
        sid = f"check-{time.monotonic_ns()}"
        assert c.post("/reset", json={"session_id": sid}).status_code == 200
        r = c.post("/act", content=json_numpy.dumps({**make_obs(7), "session_id": sid}))
        assert r.status_code == 200, r.text
        s = policy.new_session()
        np.testing.assert_array_equal(np.stack(json_numpy.loads(r.text)), policy.infer(make_obs(7), s)["actions"])


def test_catalogue_size():
    assert len(CLASSES) >= 150, len(CLASSES)
    print(f"\n{len(CLASSES)} malformed-request classes ({len(SLOW)} wait for a timeout)")


@pytest.mark.parametrize("name", FAST)
def test_each_class_gets_a_4xx(server, name):
    run_class(server, name, 0)


def test_stalled_and_slow_clients_are_answered_or_closed_in_bounded_time(server):
    """Every transport class at once, in threads: each ends within its bound (timeouts + slack)."""
    results, threads = {}, []
    t0 = time.monotonic()

    def one(name):
        try:
            results[name] = ("ok", run_class(server, name, 0), time.monotonic() - t0)
        except Exception as e:  # reported below with its class
            results[name] = ("failed", repr(e), time.monotonic() - t0)

    for name in sorted(SLOW):
        threads.append(threading.Thread(target=one, args=(name,)))
        threads[-1].start()
    for t in threads:
        t.join(60)
    bad = {k: v for k, v in results.items() if v[0] != "ok"}
    assert not bad and len(results) == len(SLOW), bad
    assert max(v[2] for v in results.values()) < HEADER_S + 6.0 + BODY_S + 5.0, results


def test_many_held_open_sockets_are_closed(server):
    """70 connections that open and stall (silent, half a request line, half a body) are all
    answered 408 or closed within the header / read timeouts; serving continues."""
    socks, t0 = [], time.monotonic()
    for i in range(70):
        s = socket.create_connection(("127.0.0.1", server.port))
        if i % 3 == 1:
            s.sendall(b"POST /act HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        elif i % 3 == 2:
            s.sendall(http_request(length=False, headers={"Content-Length": "1000"}) + b"{")
        socks.append(s)
    statuses = []
    for s in socks:
        statuses.append(read_status(s, timeout=HEADER_S + READ_S + 10))
        s.close()
    assert time.monotonic() - t0 < HEADER_S + READ_S + 10
    assert set(statuses) <= {408, None} and statuses.count(408) >= 46, statuses  # the request-bearing ones all got 408


KINDS = st.sampled_from(FAST)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(name=KINDS, seed=st.integers(0, 2**32 - 1))
def test_fuzzed_classes_never_get_a_5xx(server, name, seed):
    run_class(server, name, seed)


def test_server_alive_without_5xx_or_logged_errors(server, policy, errors):
    """After the whole catalogue and the fuzzing: no 5xx counted, no ERROR logged, a valid query served."""
    with httpx.Client(base_url=server.url) as c:
        counted = c.get("/metrics").json()["errors"]
    assert not [s for s in counted if int(s) >= 500], counted
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert_serving(server, policy)


# -- protocol details ------------------------------------------------------------------------------
def test_head_health_and_a_surrogate_instruction(server):
    with httpx.Client(base_url=server.url) as c:
        r = c.head("/health")
        assert r.status_code == 200 and r.content == b""
        body = dumps_raw(obs(instruction="pick \ud800 up"))
        r = c.post("/act", content=body)
        assert r.status_code == 400 and "lone UTF-16 surrogate" in r.json()["error"], r.text


def test_origin_allowed_explicitly_and_host_names(policy):
    access = AccessPolicy(hosts=("robot-gpu.local", "127.0.0.1"), origins=("http://localhost:3000",))
    with BackgroundServer(create_app(policy, ServerConfig(access=access))) as srv:
        with httpx.Client(base_url=srv.url) as c:
            assert c.post("/reset", json={}, headers={"Origin": "http://localhost:3000"}).status_code == 200
            assert c.post("/reset", json={}, headers={"Origin": "http://localhost:3001"}).status_code == 403
            assert c.get("/health", headers={"Host": "robot-gpu.local:8777"}).status_code == 200
            assert c.get("/health", headers={"Host": "[::1]:8777"}).status_code == 200
            assert c.get("/health", headers={"Host": "other.local"}).status_code == 403
    assert [host_name(h) for h in ("a.b:80", "[::1]:9", "[::1]", "::1", "x")] == ["a.b", "::1", "::1", "::1", "x"]


def test_token(policy, monkeypatch):
    config = ServerConfig(access=AccessPolicy(token=TOKEN))
    with BackgroundServer(create_app(policy, config)) as srv, httpx.Client(base_url=srv.url) as c:
        for headers in ({}, {"Authorization": "Bearer wrong-token-123"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            r = c.get("/health", headers=headers)
            assert r.status_code == 401 and "Authorization: Bearer" in r.json()["expected"], headers
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.post("/act", content=json_numpy.dumps(make_obs(0))).status_code == 401
        assert c.get("/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        with RemotePolicy(srv.url, token=TOKEN) as remote:
            assert remote.infer(make_obs(0))["actions"].shape == (8, 7)
        monkeypatch.setenv("VLA_ADP_TOKEN", TOKEN)
        with RemotePolicy(srv.url) as remote:
            assert remote.health()["status"] == "ok"
        monkeypatch.delenv("VLA_ADP_TOKEN")
        with RemotePolicy(srv.url) as remote, pytest.raises(RemotePolicyError) as e:
            remote.health()
        assert e.value.status == 401
    with pytest.raises(ValueError, match="at least 8"):
        AccessPolicy(token="short")


def test_cli_bind_rules(tiny_ckpt, capsys, monkeypatch):
    from vla_adp.cli import main

    monkeypatch.delenv("VLA_ADP_TOKEN", raising=False)
    assert main(["serve", "--checkpoint", "/does/not/exist", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and "VLA_ADP_TOKEN" in err and "--allow-remote" in err
    # with a token the bind rule passes and the next problem (the missing folder) is reported instead
    monkeypatch.setenv("VLA_ADP_TOKEN", TOKEN)
    assert main(["serve", "--checkpoint", "/does/not/exist", "--host", "0.0.0.0"]) == 2
    assert "/does/not/exist" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", "/does/not/exist", "--token", "short"]) == 2
    assert "at least 8" in capsys.readouterr().err


def test_body_limit_fits_the_image_limit():
    big = np.zeros((2048, 2048, 3), np.uint8)
    body = json_numpy.dumps({"full_image": big, "wrist_image": big, "state": np.zeros(8),
                             "instruction": "x" * 2048, "trajectory": [np.zeros(8)] * 4096})
    assert len(body) <= ServerConfig().body_bytes(2) < len(body) + (3 << 20)
    with pytest.raises(ValueError, match="cannot carry 2 images of 2048x2048"):
        ServerConfig(max_body_bytes=16 << 20).body_bytes(2)


# -- anonymous clients ---------------------------------------------------------------------------
def anon_client(server, address):
    return httpx.Client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(local_address=address))


def test_anonymous_robots_on_two_addresses_never_share_gate_history(server, policy):
    """Two OFT clients without session ids on 127.0.0.2 and 127.0.0.3, interleaved: each gets exactly
    its own local episode (gate states and actions), under its own ``anon-<address>`` session."""
    plans = {a: [make_obs(500 + 10 * i + q) for q in range(5)] for i, a in enumerate(("127.0.0.2", "127.0.0.3"))}
    clients = {a: anon_client(server, a) for a in plans}
    try:
        got = {a: [] for a in plans}
        for q in range(5):
            for a, c in clients.items():
                r = c.post("/act", content=json_numpy.dumps(plans[a][q]), params={"info": 1})
                assert r.status_code == 200, r.text
                got[a].append(json_numpy.loads(r.text))
    finally:
        for c in clients.values():
            c.close()
    for a, outs in got.items():
        s = policy.new_session()
        want = [policy.infer(o, s) for o in plans[a]]
        assert [o["info"]["session_id"] for o in outs] == [f"anon-{a}"] * 5
        assert [o["info"]["query"] for o in outs] == list(range(5))
        for o, w in zip(outs, want):
            np.testing.assert_array_equal(o["actions"], w["actions"])
            assert o["info"]["gate_state"] == w["info"]["gate_state"]


def test_anonymous_episode_rule(server, clock):
    """A new instruction, or a silence longer than anonymous_gap_s, starts a new episode; POST /reset too."""
    with anon_client(server, "127.0.0.4") as c:
        def query(instruction):
            r = c.post("/act", content=json_numpy.dumps(make_obs(1, instruction=instruction)), params={"info": 1})
            return json_numpy.loads(r.text)["info"]["query"]

        assert [query("open the drawer") for _ in range(3)] == [0, 1, 2]
        assert [query("close the drawer") for _ in range(2)] == [0, 1]  # another task: another episode
        clock.t += 31.0  # longer than anonymous_gap_s: the robot was reset in between
        assert query("close the drawer") == 0
        assert c.post("/reset").json() == {"session_id": "anon-127.0.0.4", "created": False, "session_ttl_s": 100.0}
        assert query("close the drawer") == 0


def test_anonymous_refused_and_full(policy):
    with BackgroundServer(create_app(policy, ServerConfig(anonymous="refuse"))) as srv, \
            httpx.Client(base_url=srv.url) as c:
        r = c.post("/act", content=json_numpy.dumps(make_obs(0)))
        assert r.status_code == 400 and "X-Session-Id" in r.json()["expected"]
        assert c.post("/reset").status_code == 400
        assert c.post("/reset", json={"session_id": "named"}).status_code == 200
    with BackgroundServer(create_app(policy, ServerConfig(max_sessions=1))) as srv, httpx.Client(base_url=srv.url) as c:
        assert c.post("/reset", json={"session_id": "only"}).status_code == 200
        r = c.post("/act", content=json_numpy.dumps(make_obs(0)))  # the anonymous session finds no room
        assert r.status_code == 429 and "limit 1" in r.json()["error"], r.text
