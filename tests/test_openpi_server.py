"""openpi's websocket protocol on a real loopback port, talked to with the real ``openpi-client``.

The server (:mod:`vla_adp.serve.openpi_server`) runs a tiny checkpoint pruned by ADP with the
path-length gate, as ``tests/test_server.py`` does for the HTTP protocol: each query's gate decision
depends on its own episode's path, so state shared between connections would change actions.
Malformed frames are sent with a raw ``websockets`` client (the real client only packs dicts).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest
import torch
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.conftest import make_obs
from tests.test_server import BAD as HTTP_BAD
from tests.test_server import SRC, episode, free_port, local_run, without_timing
from vla_adp.policy import Policy
from vla_adp.pruning.registry import build_pruner
from vla_adp.serve import msgpack_numpy
from vla_adp.serve.openpi_server import (OPENPI_LIBERO_KEYS, BackgroundOpenpiServer, OpenpiServer, check_key_map,
                                         rename)
from vla_adp.serve.server import ServerConfig

openpi_client = pytest.importorskip("openpi_client", reason="dev extra: pip install openpi-client")
from openpi_client import msgpack_numpy as openpi_msgpack  # noqa: E402
from openpi_client.websocket_client_policy import WebsocketClientPolicy  # noqa: E402

# openpi-client 0.1.2 calls websockets.sync.client.connect() outside a with-block (websockets >= 16 warns)
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
MAX_FRAME = 2 << 20
OURS = {v: k for k, v in OPENPI_LIBERO_KEYS.items()}  # our key -> openpi's


def as_openpi(obs):
    """Our observation under the key names of openpi's LIBERO example client."""
    return {OURS.get(k, k): v for k, v in obs.items()}


@pytest.fixture(scope="module")
def policy(tiny_ckpt):
    return Policy.load(tiny_ckpt, pruner=build_pruner("adp", keep_ratio=0.25, displacement="path"), dtype=torch.float32)


@pytest.fixture(scope="module")
def server(policy):
    config = ServerConfig(max_body_bytes=MAX_FRAME, max_sessions=8, max_image_side=512)
    with BackgroundOpenpiServer(OpenpiServer(policy, config)) as srv:
        yield srv


@pytest.fixture(scope="module")
def raw(server):
    """One raw websocket connection (its metadata frame already read)."""
    with connect(server.url, compression=None, max_size=None) as ws:
        msgpack_numpy.unpackb(ws.recv())
        yield ws


@contextlib.contextmanager
def client(server_or_port):
    """The real client, its connection closed afterwards (WebsocketClientPolicy has no close())."""
    port = getattr(server_or_port, "port", server_or_port)
    remote = WebsocketClientPolicy(host="127.0.0.1", port=port)
    try:
        yield remote
    finally:
        remote._ws.close()


def assert_serving(ws, policy):
    """This connection still answers a valid query as a fresh local episode would."""
    ws.send(openpi_msgpack.packb({"__ctrl__": "episode_start"}))
    assert openpi_msgpack.unpackb(ws.recv()) == {"__ack__": "episode_start"}
    ws.send(openpi_msgpack.packb(as_openpi(make_obs(7))))
    out = openpi_msgpack.unpackb(ws.recv())
    np.testing.assert_array_equal(out["actions"], local_run(policy, [make_obs(7)])[0]["actions"])


# -- protocol ----------------------------------------------------------------------------------
def test_metadata_on_connect_and_healthz(server, policy):
    with client(server) as remote:
        meta = remote.get_server_metadata()
    assert meta["server"] == "vla-adp" and meta["protocol"] == "openpi-websocket"
    assert (meta["chunk"], meta["action_dim"], meta["pruner"]) == (policy.platform.chunk, 7, "adp")
    assert meta["key_map"] == OPENPI_LIBERO_KEYS and "observation/image" in meta["observation"]
    r = httpx.get(f"http://127.0.0.1:{server.port}/healthz")
    assert r.status_code == 200 and r.text == "OK\n"


def test_real_client_gets_local_actions_bit_identical(server, policy):
    """An episode through openpi-client equals the local policy's, action for action, bit for bit,
    with openpi's timing fields in every answer."""
    obs = episode(40, 4)
    want = local_run(policy, obs)
    with client(server) as remote:
        got = [remote.infer(as_openpi(o)) for o in obs]
    for q, (g, w) in enumerate(zip(got, want)):
        assert g["actions"].dtype == np.float64 and g["actions"].shape == (policy.platform.chunk, 7)
        np.testing.assert_array_equal(g["actions"], w["actions"], err_msg=f"query {q}")
        assert without_timing(g["info"]) == without_timing(w["info"])
        assert g["policy_timing"]["infer_ms"] > 0 and g["server_timing"]["infer_ms"] > 0
    assert "prev_total_ms" not in got[0]["server_timing"] and got[1]["server_timing"]["prev_total_ms"] > 0
    assert any(g["info"]["pruned"] for g in got) and not all(g["info"]["pruned"] for g in got)


def test_concurrent_connections_are_isolated(server, policy):
    """Robots (one connection each) query at the same time, with recorded paths; each gets exactly
    what it would get alone."""
    n_robots, n_queries = 3, 6
    plans = {i: episode(50 + i, n_queries) for i in range(n_robots)}
    paths = {i: {q: [np.full(8, 0.05 * (i + 1) * k) for k in range(3)] for q in range(1, n_queries)}
             for i in range(n_robots)}
    want = {i: local_run(policy, plans[i], paths[i]) for i in plans}
    got, errors = {}, []
    barrier = threading.Barrier(n_robots)

    def robot(i):
        try:
            with client(server) as remote:
                barrier.wait()
                got[i] = [remote.infer({**as_openpi(o), "trajectory": np.stack(paths[i][q]) if q in paths[i] else []})
                          for q, o in enumerate(plans[i])]
        except Exception as e:  # surfaced below with the robot it came from
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=robot, args=(i,)) for i in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in plans:
        for q, (g, w) in enumerate(zip(got[i], want[i])):
            np.testing.assert_array_equal(g["actions"], w["actions"], err_msg=f"robot {i} query {q}")
            assert g["info"]["displacement"] == w["info"]["displacement"]
            assert g["info"]["gate_state"] == w["info"]["gate_state"]
    assert len({tuple(g["info"]["displacement"] for g in got[i]) for i in plans}) == n_robots


def test_episode_start_control_resets_the_connection(server, policy):
    obs = episode(60, 3)
    with client(server) as remote:
        first = [remote.infer(as_openpi(o)) for o in obs]
        assert remote.infer({"__ctrl__": "episode_start"}) == {"__ack__": "episode_start"}
        second = [remote.infer(as_openpi(o)) for o in obs]
        assert remote.infer({"__ctrl__": "something"}) == {"__ack__": "ignored"}  # as openpi's server
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["actions"], b["actions"])
        assert a["info"]["query"] == b["info"]["query"]


def test_key_map_is_configurable(policy):
    """Our own names always pass; a custom map renames another client's keys."""
    custom = {"cam_high": "full_image", "cam_wrist": "wrist_image", "qpos": "state", "task": "instruction"}
    obs = make_obs(3)
    want = local_run(policy, [obs])[0]["actions"]
    with BackgroundOpenpiServer(OpenpiServer(policy, key_map=custom)) as srv:
        with client(srv) as remote:
            assert remote.get_server_metadata()["key_map"] == custom
            mine = {"cam_high": obs["full_image"], "cam_wrist": obs["wrist_image"], "qpos": obs["state"],
                    "task": obs["instruction"]}
            np.testing.assert_array_equal(remote.infer(mine)["actions"], want)
            np.testing.assert_array_equal(remote.infer(dict(obs))["actions"],
                                          local_run(policy, [obs, obs])[1]["actions"])
    with pytest.raises(ValueError, match="not observation fields"):
        check_key_map({"img": "picture"})
    with pytest.raises(ValueError, match="same field"):
        check_key_map({"a": "state", "b": "state"})
    with pytest.raises(ValueError, match="JSON object of strings"):
        check_key_map(["a"])


def test_real_client_sees_a_clean_error_and_keeps_its_connection(server, policy):
    with client(server) as remote:
        with pytest.raises(RuntimeError, match=r"missing field\(s\) \['state'\]"):
            remote.infer({k: v for k, v in as_openpi(make_obs(1)).items() if k != "observation/state"})
        np.testing.assert_array_equal(remote.infer(as_openpi(make_obs(1)))["actions"],
                                      local_run(policy, [make_obs(1)])[0]["actions"])


# -- bad input ---------------------------------------------------------------------------------
DROP = object()
IMG = np.zeros((224, 224, 3), np.uint8)
NP = {b"__ndarray__": True, b"data": b"\x00\x01\x02\x03", b"dtype": "|u1", b"shape": [4]}


def valid(**changes):
    obs = as_openpi(make_obs(9))
    obs.update(changes)
    return {k: v for k, v in obs.items() if v is not DROP}


def pack(obj):
    return openpi_msgpack.packb(obj)


# The HTTP server's malformed-input classes (tests/test_server.py BAD), same names, as openpi frames:
# (name, frame, fragment of the error message). JSON-only classes become their msgpack counterparts.
BAD = [
    ("not json", b"hello", "bytes after its msgpack object"),
    ("truncated json", pack(valid())[:100], "not a valid msgpack message"),
    ("bad utf-8", b"\x81\xa6prompt\xa2\xff\xfe", "UnicodeDecodeError"),
    ("empty body", b"", "not a valid msgpack message"),
    ("top-level list", pack([1, 2]), "msgpack list"),
    ("deep nesting", b"\x91" * 100000 + b"\x90", "nested too deeply"),
    ("missing image", pack(valid(**{"observation/image": DROP})), "missing field(s) ['full_image']"),
    ("missing state", pack(valid(**{"observation/state": DROP})), "missing field(s) ['state']"),
    ("missing instruction", pack(valid(prompt=DROP)), "missing field(s) ['instruction']"),
    ("extra field", pack(valid(foo=1)), "unexpected field(s) ['foo']"),
    ("no wrist image", pack(valid(**{"observation/wrist_image": DROP})), "0 wrist image(s)"),
    ("two wrist images", pack(valid(left_wrist=IMG)), "2 wrist image(s)"),
    ("both instruction keys", pack(valid(task_description="x")), "both 'instruction' and 'task_description'"),
    ("image float", pack(valid(**{"observation/image": IMG.astype(np.float32)})), "full_image has dtype float32"),
    ("image 2-d", pack(valid(**{"observation/image": IMG[..., 0]})), "dtype uint8 and shape [224, 224]"),
    ("image 4 channels", pack(valid(**{"observation/wrist_image": np.zeros((224, 224, 4), np.uint8)})),
     "shape [224, 224, 4]"),
    ("image too small", pack(valid(**{"observation/image": np.zeros((8, 224, 3), np.uint8)})), "8x224 pixels"),
    ("image too large", pack(valid(**{"observation/image": np.zeros((600, 32, 3), np.uint8)})), "600x32 pixels"),
    ("image as list", pack(valid(**{"observation/image": [[0, 0, 0]]})), "full_image is a list"),
    ("image as string", pack(valid(**{"observation/image": "img.png"})), "full_image is str"),
    ("image scalar", pack(valid(**{"observation/image": np.uint8(3)})), "numpy scalar"),
    ("state nan", pack(valid(**{"observation/state": np.array([np.nan] + [0.0] * 7)})), "non-finite"),
    ("state inf in a list", pack(valid(**{"observation/state": [float("inf")] + [0.0] * 7})), "non-finite"),
    ("state wrong length", pack(valid(**{"observation/state": np.zeros(7)})), "state has shape [7]"),
    ("state 2-d", pack(valid(**{"observation/state": np.zeros((1, 8))})), "state has shape [1, 8]"),
    ("state string", pack(valid(**{"observation/state": "0 0 0"})), "state is str"),
    ("state bools", pack(valid(**{"observation/state": np.ones(8, bool)})), "dtype bool"),
    ("instruction empty", pack(valid(prompt="")), "instruction is str ''"),
    ("instruction blank", pack(valid(prompt="   ")), "instruction is str"),
    ("instruction number", pack(valid(prompt=5)), "instruction is int 5"),
    ("instruction too long", pack(valid(prompt="a" * 5000)), "5000 characters"),
    ("bad base64", pack(valid(**{"observation/image": {**NP, b"data": "AAECAw=="}})), "must be msgpack bin"),
    ("wrong byte count", pack(valid(**{"observation/image": {**NP, b"shape": [224, 224, 3]}})), "holds 4 bytes"),
    ("object dtype", pack(valid(**{"observation/image": {**NP, b"dtype": "|O"}})), "not a plain numeric dtype"),
    ("unknown dtype", pack(valid(**{"observation/image": {**NP, b"dtype": "x9"}})), "not a numpy dtype"),
    ("json-numpy extra key", pack(valid(**{"observation/image": {**NP, b"order": "F"}})), "expected exactly"),
    ("negative shape", pack(valid(**{"observation/image": {**NP, b"shape": [-1]}})), "non-negative ints"),
    # deploy.py's {"encoded": <JSON string>} form does not exist in this protocol: a field like any other
    ("encoded with extras", pack(valid(encoded="{}")), "unexpected field(s) ['encoded']"),
    ("encoded not a string", pack({"encoded": {"a": 1}}), "unexpected field(s) ['encoded']"),
    ("encoded not json", pack({"encoded": "{nope"}), "unexpected field(s) ['encoded']"),
    ("encoded a list", pack({"encoded": "[]"}), "unexpected field(s) ['encoded']"),
    ("encoded bad array", pack({"encoded": json.dumps({"state": [0] * 3})}), "unexpected field(s) ['encoded']"),
    # each connection is one session: an id in the body is refused, whatever it is
    ("session id chars", pack(valid(session_id="a b/c")), "session_id is not used over the websocket"),
    ("session id long", pack(valid(session_id="a" * 129)), "session_id is not used over the websocket"),
    ("session id number", pack(valid(session_id=7)), "session_id is not used over the websocket"),
    ("unknown session", pack(valid(session_id="nobody")), "session_id is not used over the websocket"),
    ("return_info string", pack(valid(return_info="maybe")), "return_info is 'maybe'"),
    ("trajectory not a list", pack(valid(trajectory=3)), "trajectory is int"),
    ("trajectory bad state", pack(valid(trajectory=[np.zeros(8), np.zeros(2)])), "trajectory[1] has shape [2]"),
    ("trajectory nan", pack(valid(trajectory=[np.full(8, np.inf)])), "trajectory[0] holds non-finite"),
    # ours only
    ("text frame", "{}", "a text frame"),
    ("non-string key", b"\x81\xc4\x01k\x01", "are not strings"),
    ("int map key", b"\x81\x01\x01", "not a valid msgpack message"),
    ("scalar out of range", pack(valid(**{"observation/state": {b"__npgeneric__": True, b"data": 300,
                                                                 b"dtype": "|u1"}})), "does not fit"),
]
# Classes with no counterpart: "oversized" is closed by the websocket layer (test below); msgpack
# integers have 64 bits, so "state huge int" (10**400) cannot be encoded at all.
SEPARATE = {"oversized": "test_oversized_frame_closes_with_1009", "state huge int": "not encodable in msgpack"}


def test_every_http_bad_class_has_a_websocket_counterpart():
    assert {name for name, *_ in HTTP_BAD} - {name for name, *_ in BAD} - set(SEPARATE) == set()


@pytest.mark.parametrize("name, frame, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_frames_get_a_clean_error(raw, policy, name, frame, fragment):
    raw.send(frame)
    answer = raw.recv(timeout=60)
    assert isinstance(answer, str), answer[:200]
    out = json.loads(answer)
    assert set(out) == {"error", "expected", "status"} and out["status"] == 400 and out["expected"]
    assert fragment in out["error"], out


def test_connection_serves_after_the_bad_frames(raw, server, policy):
    assert_serving(raw, policy)
    assert "500" not in httpx.get(f"http://127.0.0.1:{server.port}/metrics").json()["errors"]


def test_oversized_frame_closes_with_1009(server, policy):
    with connect(server.url, compression=None, max_size=None) as ws:
        ws.recv()
        ws.send(b"\x00" * (MAX_FRAME + 1))
        with pytest.raises(websockets.ConnectionClosed) as e:
            ws.recv(timeout=30)
    assert e.value.rcvd.code == 1009
    with connect(server.url, compression=None, max_size=None) as ws:
        ws.recv()
        assert_serving(ws, policy)


def test_connection_limit_is_a_503_before_the_handshake(policy):
    with BackgroundOpenpiServer(OpenpiServer(policy, ServerConfig(max_sessions=1))) as srv:
        with client(srv):
            with pytest.raises(websockets.InvalidStatus, match="503"):
                WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        time.sleep(0.2)
        with client(srv):  # the slot is free again
            pass


def test_internal_error_closes_that_connection_only(tiny_ckpt):
    """A fault injected into one query (no other way to make the real model fail on demand): the
    client reads the error, its connection is closed with 1011, the next connection is served."""

    class Faulty(Policy):
        def infer(self, obs, session=None):
            if obs["instruction"] == "explode":
                raise RuntimeError("injected failure")
            return super().infer(obs, session)

    faulty = Faulty.load(tiny_ckpt, dtype=torch.float32)
    with BackgroundOpenpiServer(OpenpiServer(faulty)) as srv:
        remote = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        with pytest.raises(RuntimeError, match="internal error: RuntimeError: injected failure"):
            remote.infer(as_openpi({**make_obs(0), "instruction": "explode"}))
        with pytest.raises(websockets.ConnectionClosed) as e:
            remote._ws.recv(timeout=10)
        assert e.value.rcvd.code == 1011
        with client(srv) as again:
            np.testing.assert_array_equal(again.infer(as_openpi(make_obs(0)))["actions"],
                                          Policy.load(tiny_ckpt, dtype=torch.float32).infer(make_obs(0))["actions"])


def test_rename_refuses_a_field_given_twice():
    from vla_adp.serve.validate import RequestError

    with pytest.raises(RequestError, match="given twice"):
        rename({"prompt": "a", "instruction": "b"}, OPENPI_LIBERO_KEYS)


# -- fuzzing -----------------------------------------------------------------------------------
leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(allow_nan=True),
                 st.text(max_size=12), st.binary(max_size=12))
value = st.recursive(leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                  st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                     max_leaves=12)
numpy_map = st.fixed_dictionaries({
    b"__ndarray__": st.one_of(st.just(True), value),
    b"data": st.one_of(st.binary(max_size=16), st.sampled_from([IMG.tobytes(), b""]), value),
    b"dtype": st.one_of(st.sampled_from(["|u1", "<f8", "<f4", "|b1", "|O", "<U3", "V2", ">i8", "<c8"]), value),
    b"shape": st.one_of(st.lists(st.integers(-2, 300), max_size=4), st.just([224, 224, 3]), value),
})
field = st.one_of(value, numpy_map, st.sampled_from([IMG, np.zeros(8), np.zeros(7), np.float64(1.0), np.uint8(1)]))
keys = st.sampled_from(["observation/image", "observation/wrist_image", "observation/state", "prompt",
                        "full_image", "state", "instruction", "trajectory", "__ctrl__", "session_id", "extra"])
frames = st.one_of(
    st.binary(max_size=64),
    value.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(keys, field, max_size=6).map(pack),
    st.dictionaries(keys, field, max_size=3).map(lambda d: pack(valid(**d))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(frame=frames)
def test_fuzzed_frames_never_break_the_server(raw, frame):
    raw.send(frame)
    answer = raw.recv(timeout=60)
    if isinstance(answer, str):
        out = json.loads(answer)
        assert out["status"] == 400 and out["error"] and out["expected"], out
    else:
        msgpack_numpy.unpackb(answer)  # an answer (actions or a control ack)


def test_server_is_healthy_after_fuzzing(raw, server, policy):
    assert_serving(raw, policy)
    assert "500" not in httpx.get(f"http://127.0.0.1:{server.port}/metrics").json()["errors"]


# -- the command line --------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_serves_an_openpi_client(tiny_ckpt, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    key_map = tmp_path / "keys.json"
    key_map.write_text(json.dumps({"image": "full_image", "wrist": "wrist_image", "state": "state",
                                   "prompt": "instruction"}))
    cmd = [sys.executable, "-m", "vla_adp", "serve", "--protocol", "openpi", "--checkpoint", str(tiny_ckpt),
           "--port", str(port), "--dtype", "fp32", "--device", "cpu", "--log-level", "warning",
           "--pruner", "adp", "--keep", "0.5", "--key-map", str(key_map)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        obs = make_obs(12)
        with client(port) as remote:
            assert remote.get_server_metadata()["pruner"] == "adp"
            got = remote.infer({"image": obs["full_image"], "wrist": obs["wrist_image"], "state": obs["state"],
                                "prompt": obs["instruction"]})
        local = Policy.load(tiny_ckpt, pruner=build_pruner("adp", keep_ratio=0.5), dtype=torch.float32)
        np.testing.assert_array_equal(got["actions"], local.infer(obs)["actions"])
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and f"on ws://127.0.0.1:{port}" in out, out


def test_cli_refuses_a_key_map_for_the_http_protocol(tiny_ckpt, capsys):
    from vla_adp.cli import main

    assert main(["serve", "--checkpoint", str(tiny_ckpt), "--key-map", "{}"]) == 2
    assert "--key-map applies to --protocol openpi only" in capsys.readouterr().err
