"""The policy server on a real loopback port, talked to with real HTTP clients (httpx, json_numpy).

A tiny checkpoint built in the test run is served by uvicorn in a background thread, pruned by ADP
with the path-length gate: each query's gate decision depends on the end-effector path of *its*
episode so far, so any state shared between sessions changes displacements, gate states and actions.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

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
from vla_adp.serve.client import RemotePolicy, RemotePolicyError
from vla_adp.serve.metrics import percentiles
from vla_adp.serve.server import (BackgroundServer, ServerConfig, body_limit, check_bind, create_app, is_loopback,
                                  jsonable)

TTL = 100.0
MAX_SIDE = 512
MAX_BODY = body_limit(2, MAX_SIDE)  # the default limit for two images of at most 512 x 512
ANON = "anon-127.0.0.1"  # the session of id-less requests from this machine
SRC = Path(__file__).resolve().parents[1] / "src"


class Clock:
    """A monotonic clock the tests move by hand (session expiry without sleeping)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
    return Policy.load(tiny_ckpt, pruner=build_pruner("adp", keep_ratio=0.25, displacement="path"), dtype=torch.float32)


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def server(policy, clock):
    config = ServerConfig(session_ttl_s=TTL, max_sessions=16, max_image_side=MAX_SIDE)
    with BackgroundServer(create_app(policy, config, clock=clock)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def post(http, path, obj=None, raw=None, headers=None, **kw):
    body = raw if raw is not None else b"" if obj is None else json_numpy.dumps(obj)
    return http.post(path, content=body, headers={"content-type": "application/json", **(headers or {})}, **kw)


def local_run(policy, observations, paths=None):
    """What the local policy answers for one episode (fresh session)."""
    s = policy.new_session()
    outs = []
    for i, obs in enumerate(observations):
        for state in (paths or {}).get(i, []):
            policy.record_step(state, s)
        outs.append(policy.infer(obs, s))
    return outs


def episode(seed, n):
    return [make_obs(seed * 100 + i) for i in range(n)]


def assert_serving(http, policy):
    """The server is up and still answers a valid query correctly."""
    assert http.get("/health").json()["status"] == "ok"
    sid = f"check-{time.monotonic_ns()}"
    assert post(http, "/reset", {"session_id": sid}).status_code == 200
    r = post(http, "/act", {**make_obs(7), "session_id": sid})
    assert r.status_code == 200, r.text
    want = local_run(policy, [make_obs(7)])[0]["actions"]
    np.testing.assert_array_equal(np.stack(json_numpy.loads(r.text)), want)


# -- OpenVLA-OFT protocol ----------------------------------------------------------------------
def test_oft_client_round_trip(http, policy):
    """A raw json_numpy body as deploy.py's clients send it; the answer is a list of chunk actions."""
    obs = make_obs(1)
    assert post(http, "/reset").json()["session_id"] == ANON
    r = post(http, "/act", obs)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    actions = json_numpy.loads(r.text)
    assert isinstance(actions, list) and len(actions) == policy.platform.chunk
    assert all(isinstance(a, np.ndarray) and a.shape == (policy.platform.action_dim,) for a in actions)
    np.testing.assert_array_equal(np.stack(actions), local_run(policy, [obs])[0]["actions"])


def test_oft_sample_observation_keys(http, policy):
    """OFT's sample observation names the instruction ``task_description``."""
    obs = make_obs(2)
    obs["task_description"] = obs.pop("instruction")
    post(http, "/reset")
    r = post(http, "/act", obs)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.stack(json_numpy.loads(r.text)), local_run(policy, [make_obs(2)])[0]["actions"])


def test_encoded_form_answers_a_json_string(http, policy):
    obs = make_obs(3)
    post(http, "/reset")
    r = http.post("/act", json={"encoded": json_numpy.dumps(obs)})
    assert r.status_code == 200
    text = r.json()
    assert isinstance(text, str)  # double-encoded, as deploy.py does
    np.testing.assert_array_equal(np.stack(json_numpy.loads(text)), local_run(policy, [obs])[0]["actions"])


def test_resized_when_not_224(http, policy):
    obs = make_obs(4, size=256)
    post(http, "/reset")
    r = post(http, "/act", obs)
    assert r.status_code == 200
    np.testing.assert_array_equal(np.stack(json_numpy.loads(r.text)), local_run(policy, [obs])[0]["actions"])


def without_timing(info):
    return {k: v for k, v in jsonable(info).items() if k not in ("timing_ms", "session_id")}


@pytest.mark.parametrize("how", ["query", "field"])
def test_info_on_request(http, policy, how):
    sid = f"info-{how}"
    post(http, "/reset", {"session_id": sid})
    obs = episode(1, 5)
    want = local_run(policy, obs)
    for i, o in enumerate(obs):
        body = {**o, "session_id": sid} if how == "query" else {**o, "session_id": sid, "return_info": True}
        r = post(http, "/act", body, params={"info": "1"} if how == "query" else None)
        out = json_numpy.loads(r.text)
        assert out["actions"].shape == (8, 7)
        np.testing.assert_array_equal(out["actions"], want[i]["actions"])
        assert out["info"]["session_id"] == sid and out["info"]["query"] == i
        assert without_timing(out["info"]) == without_timing(want[i]["info"])  # gate state, kept indices, FLOPs
        assert set(out["info"]["timing_ms"]) >= {"vision", "llm", "total"}
    assert [w["info"]["gate_state"] for w in want] == [0, 0, 0, 0, 1]  # cold start, then a pruned query


def test_session_by_header_or_field(http):
    post(http, "/reset", headers={"X-Session-Id": "hdr"})
    r1 = post(http, "/act", make_obs(8), headers={"X-Session-Id": "hdr"}, params={"info": "1"})
    r2 = post(http, "/act", {**make_obs(8), "session_id": "hdr"}, headers={"X-Session-Id": "hdr"}, params={"info": 1})
    assert [json_numpy.loads(r.text)["info"]["query"] for r in (r1, r2)] == [0, 1]
    r = post(http, "/act", {**make_obs(8), "session_id": "other"}, headers={"X-Session-Id": "hdr"})
    assert r.status_code == 400 and "differs from the X-Session-Id header" in r.json()["error"]


# -- sessions ----------------------------------------------------------------------------------
def test_concurrent_sessions_are_isolated(server, policy):
    """Robots query at the same time; each gets exactly what it would get alone (bit-identical)."""
    n_sessions, n_queries = 4, 8
    plans = {f"robot-{i}": episode(10 + i, n_queries) for i in range(n_sessions)}
    want = {sid: local_run(policy, obs) for sid, obs in plans.items()}
    got, errors = {}, []
    barrier = threading.Barrier(n_sessions)

    def robot(sid):
        try:
            with RemotePolicy(server.url, session_id=sid) as remote:
                remote.reset()
                barrier.wait()
                got[sid] = [remote.infer(o) for o in plans[sid]]
        except Exception as e:  # surfaced below with the session it came from
            errors.append((sid, repr(e)))

    threads = [threading.Thread(target=robot, args=(sid,)) for sid in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for sid in plans:
        for q, (g, w) in enumerate(zip(got[sid], want[sid])):
            np.testing.assert_array_equal(g["actions"], w["actions"], err_msg=f"{sid} query {q}")
            assert without_timing(g["info"]) == without_timing(w["info"]), f"{sid} query {q}"
    # the episodes prune differently, so shared state could not have gone unnoticed
    assert len({tuple(g["info"]["gate_state"] for g in got[sid]) for sid in plans}) == n_sessions


def test_reset_starts_a_new_episode(server, policy):
    obs = episode(20, 3)
    with RemotePolicy(server.url, session_id="again") as remote:
        first = [remote.infer(o) for o in obs]
        remote.reset()
        second = [remote.infer(o) for o in obs]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert a["info"]["query"] == b["info"]["query"]


def test_reset_semantics(http):
    r = post(http, "/reset", {"session_id": "fresh-1"})
    assert r.json() == {"session_id": "fresh-1", "created": True, "session_ttl_s": TTL}
    assert post(http, "/reset", {"session_id": "fresh-1"}).json()["created"] is False
    assert post(http, "/reset", raw=b"", headers={"X-Session-Id": "fresh-2"}).json()["created"] is True


def test_unknown_and_expired_sessions(http, clock):
    r = post(http, "/act", {**make_obs(0), "session_id": "never-started"})
    assert r.status_code == 404
    assert "unknown session 'never-started'" in r.json()["error"] and "POST /reset" in r.json()["expected"]
    post(http, "/reset", {"session_id": "idle"})
    assert post(http, "/act", {**make_obs(0), "session_id": "idle"}).status_code == 200
    before = http.get("/metrics").json()["expired_sessions"]
    clock.t += TTL + 1
    r = post(http, "/act", {**make_obs(0), "session_id": "idle"})
    assert r.status_code == 404 and "expired after 100 s idle" in r.json()["error"]
    assert http.get("/metrics").json()["expired_sessions"] > before
    assert http.get("/health").json()["live_sessions"] == 0
    assert post(http, "/act", make_obs(0)).status_code == 200  # the anonymous session is created on demand


def test_record_dir_writes_one_overlay_video_per_session_episode(policy, tmp_path):
    import imageio.v2 as imageio

    from vla_adp.viz.overlay import ImagePipeline, patch_boxes

    clock = Clock()
    config = ServerConfig(session_ttl_s=TTL, record_dir=str(tmp_path))
    grey = np.full((224, 224, 3), 128, np.uint8)
    obs = [{**o, "full_image": grey, "wrist_image": grey} for o in episode(40, 6)]
    with BackgroundServer(create_app(policy, config, clock=clock)) as srv, RemotePolicy(srv.url, session_id="r1") as r:
        infos = [r.infer(o)["info"] for o in obs]
        folder = tmp_path / "session-r1"
        assert not list(folder.glob("episode-*[0-9].mp4"))  # still being written: only the .partial file
        r.reset()  # the episode ends: its video is finished
        first = folder / "episode-0000.mp4"
        frames = imageio.mimread(first)
        assert len(frames) == len(obs) and frames[0].shape == (224 + 48, 2 * 224 + 4 + 12, 3)
        r.infer(obs[0])
        clock.t += TTL + 1  # the session expires; the next request notices and finishes its video
        with httpx.Client(base_url=srv.url) as c:
            assert post(c, "/act", make_obs(0)).status_code == 200
        assert len(imageio.mimread(folder / "episode-0001.mp4")) == 1
    pruned = [i for i, info in enumerate(infos) if info["pruned"]]
    assert pruned and len(pruned) < len(infos)  # the gate both pruned and restored full vision
    boxes = patch_boxes(ImagePipeline(raw_size=(224, 224)))
    for i, info in enumerate(infos):
        for cam, x0 in ((0, 0), (1, 228)):
            kept = set(range(256)) if info["kept_indices"] is None else set(info["kept_indices"][cam])
            for j in range(0, 256, 7):
                t, l, b, rr = boxes[j]
                rgb = frames[i][int(t) + 3:int(b) - 3, int(l) + x0 + 3:int(rr) + x0 - 3].reshape(-1, 3).mean(0)
                want = (128, 128, 128) if j in kept else (75, 75, 181)  # grey, or grey under the blue mask
                assert np.abs(rgb - want).max() < 12, (i, cam, j, rgb)


def test_session_limit(tiny_ckpt):
    policy = Policy.load(tiny_ckpt, dtype=torch.float32)
    with BackgroundServer(create_app(policy, ServerConfig(max_sessions=2))) as srv, httpx.Client(base_url=srv.url) as c:
        assert [post(c, "/reset", {"session_id": s}).status_code for s in ("a", "b", "a")] == [200, 200, 200]
        r = post(c, "/reset", {"session_id": "c"})
        assert r.status_code == 429 and "limit 2" in r.json()["error"]


def test_trajectory_reaches_the_gate(server, policy):
    """States recorded between queries travel with the next query: the path-length displacement
    of each window is the local policy's, and differs from the one without a recorded path."""
    obs = episode(30, 3)
    paths = {1: [np.full(8, 0.1 * k) for k in range(4)], 2: [np.full(8, -0.3), np.full(8, 0.7)]}
    want, unrecorded = local_run(policy, obs, paths), local_run(policy, obs)
    with RemotePolicy(server.url) as remote:
        remote.reset()
        got = []
        for i, o in enumerate(obs):
            for s in paths.get(i, []):
                remote.record_step(s)
            got.append(remote.infer(o))
    for g, w, u in zip(got[1:], want[1:], unrecorded[1:]):
        assert g["info"]["displacement"] == w["info"]["displacement"] != u["info"]["displacement"]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["actions"], w["actions"])


# -- bad input ---------------------------------------------------------------------------------
def valid(**changes):
    obs = make_obs(9)
    obs.update(changes)
    return {k: v for k, v in obs.items() if v is not DROP}


DROP = object()
IMG = np.zeros((224, 224, 3), np.uint8)
NP = {"__numpy__": "AAECAw==", "dtype": "|u1", "shape": [4]}


def raw(obj):
    return json.dumps(obj, default=json_numpy.default).encode()


# (name, body bytes, status, fragment of the error message)
BAD = [
    ("not json", b"hello", 400, "not valid JSON"),
    ("truncated json", b'{"full_image": ', 400, "not valid JSON"),
    ("bad utf-8", b'{"instruction": "\xff\xfe"}', 400, "not valid JSON"),
    ("empty body", b"", 400, "not valid JSON"),
    ("top-level list", b"[1, 2]", 400, "JSON list"),
    ("deep nesting", b"[" * 100000 + b"]" * 100000, 400, "nested too deeply"),
    ("missing image", raw(valid(full_image=DROP)), 400, "missing field(s) ['full_image']"),
    ("missing state", raw(valid(state=DROP)), 400, "missing field(s) ['state']"),
    ("missing instruction", raw(valid(instruction=DROP)), 400, "missing field(s) ['instruction']"),
    ("extra field", raw(valid(foo=1)), 400, "unexpected field(s) ['foo']"),
    ("no wrist image", raw(valid(wrist_image=DROP)), 400, "0 wrist image(s)"),
    ("two wrist images", raw(valid(left_wrist=IMG)), 400, "2 wrist image(s)"),
    ("both instruction keys", raw(valid(task_description="x")), 400, "both 'instruction' and 'task_description'"),
    ("image float", raw(valid(full_image=IMG.astype(np.float32))), 400, "full_image has dtype float32"),
    ("image 2-d", raw(valid(full_image=IMG[..., 0])), 400, "full_image has dtype uint8 and shape [224, 224]"),
    ("image 4 channels", raw(valid(wrist_image=np.zeros((224, 224, 4), np.uint8))), 400, "shape [224, 224, 4]"),
    ("image too small", raw(valid(full_image=np.zeros((8, 224, 3), np.uint8))), 400, "8x224 pixels"),
    ("image too large", raw(valid(full_image=np.zeros((600, 32, 3), np.uint8))), 400, "600x32 pixels"),
    ("image as list", raw(valid(full_image=[[0, 0, 0]])), 400, "full_image is a list"),
    ("image as string", raw(valid(full_image="img.png")), 400, "full_image is str"),
    ("image scalar", raw(valid(full_image=np.uint8(3))), 400, "numpy scalar"),
    ("state nan", raw(valid(state=np.array([np.nan] + [0.0] * 7))), 400, "non-finite"),
    ("state inf in a list", raw(valid(state=[float("inf")] + [0.0] * 7)), 400, "non-finite"),
    ("state wrong length", raw(valid(state=np.zeros(7))), 400, "state has shape [7]"),
    ("state 2-d", raw(valid(state=np.zeros((1, 8)))), 400, "state has shape [1, 8]"),
    ("state string", raw(valid(state="0 0 0")), 400, "state is str"),
    ("state bools", raw(valid(state=np.ones(8, bool))), 400, "dtype bool"),
    ("state huge int", raw(valid(state=[10**400] + [0] * 7)), 400, "beyond float64 range"),
    ("instruction empty", raw(valid(instruction="")), 400, "instruction is str ''"),
    ("instruction blank", raw(valid(instruction="   ")), 400, "instruction is str"),
    ("instruction number", raw(valid(instruction=5)), 400, "instruction is int 5"),
    ("instruction too long", raw(valid(instruction="a" * 5000)), 400, "5000 characters"),
    ("bad base64", raw(valid(full_image={**NP, "__numpy__": "@@@@"})), 400, "not valid base64"),
    ("wrong byte count", raw(valid(full_image={**NP, "shape": [224, 224, 3]})), 400, "holds 4 bytes"),
    ("object dtype", raw(valid(full_image={**NP, "dtype": "|O"})), 400, "not a plain numeric dtype"),
    ("unknown dtype", raw(valid(full_image={**NP, "dtype": "x9"})), 400, "not a numpy dtype"),
    ("json-numpy extra key", raw(valid(full_image={**NP, "order": "F"})), 400, "expected exactly"),
    ("negative shape", raw(valid(full_image={**NP, "shape": [-1]})), 400, "non-negative ints"),
    ("encoded with extras", raw({"encoded": "{}", "session_id": "a"}), 400, "'encoded' must be the only field"),
    ("encoded not a string", raw({"encoded": {"a": 1}}), 400, "'encoded' is a dict"),
    ("encoded not json", raw({"encoded": "{nope"}), 400, "'encoded' is not valid JSON"),
    ("encoded a list", raw({"encoded": "[]"}), 400, "'encoded' holds a JSON list"),
    ("encoded bad array", raw({"encoded": raw(valid(state=np.zeros(3))).decode()}), 400, "state has shape [3]"),
    ("session id chars", raw(valid(session_id="a b/c")), 400, "session_id is str"),
    ("session id long", raw(valid(session_id="a" * 129)), 400, "session_id is str"),
    ("session id number", raw(valid(session_id=7)), 400, "session_id is int"),
    ("return_info string", raw(valid(return_info="maybe")), 400, "return_info is 'maybe'"),
    ("trajectory not a list", raw(valid(trajectory=3)), 400, "trajectory is int"),
    ("trajectory bad state", raw(valid(trajectory=[np.zeros(8), np.zeros(2)])), 400, "trajectory[1] has shape [2]"),
    ("trajectory nan", raw(valid(trajectory=[np.full(8, np.inf)])), 400, "trajectory[0] holds non-finite"),
    ("unknown session", raw(valid(session_id="nobody")), 404, "unknown session 'nobody'"),
    ("oversized", b"{" + b" " * MAX_BODY + b"}", 413, f"larger than the {MAX_BODY}-byte limit"),
]


@pytest.mark.parametrize("name, body, status, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_are_refused_with_a_reason(http, name, body, status, fragment):
    r = post(http, "/act", raw=body)
    assert r.status_code == status, r.text
    out = r.json()
    assert set(out) == {"error", "expected"} and out["expected"]
    assert fragment in out["error"], out
    assert http.get("/health").status_code == 200


def test_oversized_chunked_body_and_routes(http, policy):
    def chunks():
        for _ in range(3):
            yield b" " * MAX_BODY

    r = http.post("/act", content=chunks())  # no Content-Length: counted while streaming
    assert r.status_code == 413 and "byte limit" in r.json()["error"]
    for r, status in ((http.get("/nowhere"), 404), (http.get("/act"), 405), (http.put("/reset"), 405)):
        assert r.status_code == status and "POST /act" in r.json()["expected"]
    r = post(http, "/act", make_obs(0), params={"info": "perhaps"})
    assert r.status_code == 400 and "query parameter info" in r.json()["error"]
    r = post(http, "/reset", {"session_id": "x", "hello": 1})
    assert r.status_code == 400 and "unexpected field(s) ['hello']" in r.json()["error"]
    r = post(http, "/reset", raw=b"{oops")
    assert r.status_code == 400
    assert_serving(http, policy)


def test_internal_error_is_a_logged_500_and_serving_goes_on(tiny_ckpt, caplog):
    """A fault injected into one query (a policy that fails on a magic instruction: there is no other
    way to make the real model fail on demand) answers 500 JSON; the next query is served."""

    class Faulty(Policy):
        def infer(self, obs, session=None):
            if obs["instruction"] == "explode":
                raise RuntimeError("injected failure")
            return super().infer(obs, session)

    policy = Faulty.load(tiny_ckpt, dtype=torch.float32)
    with BackgroundServer(create_app(policy)) as srv, httpx.Client(base_url=srv.url) as c:
        r = post(c, "/act", {**make_obs(0), "instruction": "explode"})
        assert r.status_code == 500 and r.json()["error"] == "internal error: RuntimeError: injected failure"
        assert post(c, "/act", make_obs(0)).status_code == 200
        assert c.get("/metrics").json()["errors"] == {"500": 1}
    assert any("injected failure" in rec.getMessage() or rec.exc_info for rec in caplog.records)


# -- fuzzing -----------------------------------------------------------------------------------
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                      st.text(max_size=12))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                          max_leaves=12)
numpy_obj = st.fixed_dictionaries({
    "__numpy__": st.one_of(st.sampled_from(["", "AAAA", "AAECAw==", "===", "AA=A"]), st.text(max_size=12)),
    "dtype": st.one_of(st.sampled_from(["|u1", "<f8", "<f4", "|b1", "|O", "<U3", "V2", ">i8"]), json_value),
    "shape": st.one_of(st.lists(st.integers(-2, 300), max_size=4), json_value),
})
field_value = st.one_of(json_value, numpy_obj, st.sampled_from([IMG, np.zeros(8), np.zeros(7), np.float64(1.0)]))
keys = st.sampled_from(["full_image", "wrist_image", "state", "instruction", "task_description", "session_id",
                        "return_info", "trajectory", "encoded", "left_wrist", "extra"])
bodies = st.one_of(
    st.binary(max_size=64),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(keys, field_value, max_size=7).map(raw),
    st.dictionaries(keys, field_value, max_size=3).map(lambda d: raw(valid(**d))),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=bodies)
def test_fuzzed_bodies_never_break_the_server(http, body):
    r = post(http, "/act", raw=body)
    assert r.status_code in (200, 400, 404, 413), (r.status_code, r.text, body[:200])
    if r.status_code != 200:
        out = r.json()
        assert set(out) == {"error", "expected"} and out["error"] and out["expected"]
    assert http.get("/health").status_code == 200


def test_server_is_healthy_after_fuzzing(http, policy):
    assert "500" not in http.get("/metrics").json()["errors"]
    assert_serving(http, policy)


# -- load --------------------------------------------------------------------------------------
def test_bounded_load_reports_percentiles(server, http):
    """4 robots × 8 queries at once; prints client-side and server-side p50/p99 (not asserted)."""
    n_clients, n_queries = 4, 8
    before = http.get("/metrics").json()["queries"]
    latencies, errors = [], []

    def robot(i):
        try:
            with RemotePolicy(server.url, session_id=f"load-{i}") as remote:
                remote.reset()
                for q in range(n_queries):
                    t0 = time.perf_counter()
                    out = remote.infer(make_obs(q))
                    latencies.append(1e3 * (time.perf_counter() - t0))
                    assert out["info"]["query"] == q
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    assert not errors and len(latencies) == n_clients * n_queries
    m = http.get("/metrics").json()
    assert m["queries"] - before == n_clients * n_queries
    client = percentiles(latencies)
    print(f"\nload: {n_clients} clients x {n_queries} queries in {wall:.2f} s "
          f"({len(latencies) / wall:.1f} q/s); client p50 {client['p50']:.1f} ms p99 {client['p99']:.1f} ms; "
          f"server p50 {m['latency_ms']['p50']:.1f} ms p99 {m['latency_ms']['p99']:.1f} ms; "
          f"model p50 {m['model_ms']['p50']:.1f} ms; pruned share {m['pruned_share']:.2f}")


# -- client, CLI -------------------------------------------------------------------------------
def test_remote_policy_matches_local_and_reports_errors(server, policy):
    obs = episode(40, 4)
    want = local_run(policy, obs)
    with RemotePolicy(server.url) as remote:
        got = [remote.infer({**o, "ignored_by_policy": 1}) for o in obs]  # extra keys dropped, as locally
        assert remote.platform.name == "libero" and remote.health()["pruner"] == "adp"
        with pytest.raises(RemotePolicyError, match="state has shape") as e:
            remote.infer({**obs[0], "state": np.zeros(3)})
        assert e.value.status == 400 and "finite numbers" in e.value.expected
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["actions"], w["actions"])
        assert g["actions"].flags.writeable


def test_remote_policy_unknown_server_session(server):
    with RemotePolicy(server.url, session_id="s1") as remote:
        remote.started = True  # as if it had started before the server forgot it
        with pytest.raises(RemotePolicyError, match="unknown session 's1'") as e:
            remote.infer(make_obs(0))
        assert e.value.status == 404


def test_loopback_only_unless_asked():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.com"))
    check_bind("0.0.0.0", None, allow_remote=True)
    check_bind("0.0.0.0", "a-shared-token", allow_remote=False)
    check_bind("127.0.0.1", None, allow_remote=False)
    with pytest.raises(ValueError, match="--allow-remote"):
        check_bind("0.0.0.0", None, allow_remote=False)


def test_cli_refuses_a_public_bind_before_loading(tiny_ckpt, capsys):
    from vla_adp.cli import main

    assert main(["serve", "--checkpoint", "/does/not/exist", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--allow-remote" in err and "0.0.0.0" in err


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int, timeout_s: float = 120) -> str:
    """The URL of the server ``proc`` started on ``port`` once ``/health`` answers 200."""
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return url
        except httpx.TransportError:
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)


@pytest.mark.slow
def test_cli_serves_an_oft_client(tiny_ckpt, policy, tmp_path):
    port = free_port()
    # the server's torch threads = this process's, so that both sum in the same order (bit-equal actions)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "vla_adp", "serve", "--checkpoint", str(tiny_ckpt), "--port", str(port),
           "--dtype", "fp32", "--device", "cpu", "--log-level", "warning", "--session-ttl", "30",
           "--record-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_healthy(proc, port)
        obs = make_obs(11)
        r = httpx.post(f"{url}/act", content=json_numpy.dumps(obs), timeout=60)
        plain = Policy.load(tiny_ckpt, dtype=torch.float32)
        np.testing.assert_array_equal(np.stack(json_numpy.loads(r.text)), plain.infer(obs)["actions"])
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and f"on http://127.0.0.1:{port}" in out
    import imageio.v2 as imageio

    assert len(imageio.mimread(tmp_path / f"session-{ANON}" / "episode-0000.mp4")) == 1  # finished at shutdown


@pytest.mark.slow
def test_cli_serves_the_openvla_family(tiny_openvla_ckpt):
    """``vla-adp serve --family openvla``: the table loads OpenVLA and builds its pruner; one action per query."""
    from vla_adp.families import get_family

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "vla_adp", "serve", "--family", "openvla", "--checkpoint", str(tiny_openvla_ckpt),
           "--port", str(port), "--dtype", "fp32", "--device", "cpu", "--log-level", "warning",
           "--pruner", "adp", "--keep", "0.5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_healthy(proc, port)
        family = get_family("openvla")
        local = family.load(tiny_openvla_ckpt, pruner=family.build_pruner("adp", keep_ratio=0.5),
                            dtype=torch.float32)
        for i in range(4):  # one episode in the anonymous session: ADP's gate follows it as the local one
            obs = {k: v for k, v in make_obs(20 + i).items() if k != "wrist_image"}  # OpenVLA: one camera
            r = httpx.post(f"{url}/act", content=json_numpy.dumps(obs), timeout=60)
            assert r.status_code == 200, r.text
            got = np.stack(json_numpy.loads(r.text))
            want = local.infer(obs)["actions"]
            assert got.shape == (1, 7)
            np.testing.assert_array_equal(got, want)
        assert local.session.query_index == 4
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
