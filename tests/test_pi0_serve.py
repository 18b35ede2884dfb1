"""``vla-adp serve --family pi05``: a tiny π0.5 behind the real servers on loopback, answering with the
local policy's actions. The servers validate OpenVLA-OFT's ``deploy.py`` keys (``full_image``,
``wrist_image``, ``state``, ``instruction``; openpi clients' keys are renamed to them); the π0 policy
renames them to LeRobot's (tests/test_pi0_libero.py covers LeRobot's keys from the env).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import json_numpy
import numpy as np
import pytest
import torch

from tests.conftest import make_obs
from tests.test_server import SRC, free_port, wait_healthy
from vla_adp.cli import main
from vla_adp.families import get_family
from vla_adp.model.pi0.tiny import make_tiny_pi0_checkpoint
from vla_adp.serve.server import BackgroundServer, ServerConfig, create_app


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_pi0_checkpoint(tmp_path_factory.mktemp("pi05_serve") / "pi05", "pi05", n_action_steps=5,
                                    chunk_size=8)


def _family_policy(ckpt, pruner: bool = True):
    fam = get_family("pi05")
    return fam.load(ckpt, pruner=fam.build_pruner("adp", keep_ratio=0.5, gate={"schedule": "static"}) if pruner
                    else None, dtype=torch.float32)


def test_deploy_keys_are_renamed_to_lerobot_keys(ckpt):
    policy = _family_policy(ckpt, pruner=False)
    obs = make_obs(3)
    lerobot = {"observation.images.image": obs["full_image"], "observation.images.image2": obs["wrist_image"],
               "observation.state": obs["state"], "task": obs["instruction"]}
    assert policy.lerobot_observation(obs).keys() == lerobot.keys()
    np.testing.assert_array_equal(policy.infer(obs, policy.new_session())["actions"],
                                  policy.infer(lerobot, policy.new_session())["actions"])
    with pytest.raises(ValueError, match=r"the checkpoint has 2 cameras .* the observation has full_image and 0 wrist"):
        policy.infer({k: v for k, v in obs.items() if k != "wrist_image"})
    assert policy.served_inputs() == {"n_images": 2, "image_size": policy.args.vision.image_size, "needs_state": True}


def test_http_server_answers_as_the_local_policy(ckpt):
    policy = _family_policy(ckpt)
    local = _family_policy(ckpt)
    with BackgroundServer(create_app(policy, ServerConfig(max_image_side=512))) as srv, \
            httpx.Client(base_url=srv.url, timeout=60) as http:
        health = http.get("/health").json()
        assert (health["platform"], health["n_images"], health["chunk"], health["unnorm_key"]) == \
            ("pi05_libero", 2, 5, None)
        session = local.new_session()
        assert http.post("/reset", content=b'{"session_id": "robot"}',
                         headers={"content-type": "application/json"}).status_code == 200
        for i in range(3):  # one episode; ADP prunes every query (static gate)
            obs = make_obs(30 + i)
            r = http.post("/act", content=json_numpy.dumps({**obs, "session_id": "robot", "return_info": True}),
                          headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            body = json_numpy.loads(r.text)
            want = local.infer(obs, session)
            np.testing.assert_array_equal(np.stack(body["actions"]), want["actions"])
            assert body["info"]["kept_visual"] == want["info"]["kept_visual"] < want["info"]["n_visual"]
        bad = http.post("/act", content=json_numpy.dumps({k: v for k, v in make_obs(1).items() if k != "state"}),
                        headers={"content-type": "application/json"})
        assert bad.status_code == 400 and "missing field(s) ['state']" in bad.text


def test_openpi_client_gets_the_local_actions(ckpt):
    pytest.importorskip("openpi_client", reason="dev extra: pip install openpi-client")
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from vla_adp.serve.openpi_server import BackgroundOpenpiServer, OpenpiServer

    policy, local = _family_policy(ckpt), _family_policy(ckpt)
    with BackgroundOpenpiServer(OpenpiServer(policy, ServerConfig(max_image_side=512))) as srv:
        remote = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        try:
            assert remote.get_server_metadata()["n_images"] == 2
            obs = make_obs(5)
            out = remote.infer({"observation/image": obs["full_image"], "observation/wrist_image": obs["wrist_image"],
                                "observation/state": obs["state"], "prompt": obs["instruction"]})
            np.testing.assert_array_equal(out["actions"], local.infer(obs)["actions"])
        finally:
            remote._ws.close()


@pytest.mark.parametrize("flags,match", [
    (["--protocol", "vla-eval"], "--family pi05 serves --protocol oft or openpi"),
    (["--record-dir", "x"], "--record-dir draws OpenVLA-OFT's image pipeline"),
    (["--unnorm-key", "libero_spatial"], "--unnorm-key (unnorm_key='libero_spatial'): OpenVLA-OFT's setting"),
])
def test_serve_refuses_what_pi05_does_not_have(ckpt, capsys, flags, match):
    assert main(["serve", "--family", "pi05", "--checkpoint", str(ckpt), "--port", "1", *flags]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serves_pi05(ckpt):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "vla_adp", "serve", "--family", "pi05", "--checkpoint", str(ckpt), "--port",
           str(port), "--dtype", "fp32", "--device", "cpu", "--log-level", "warning", "--pruner", "adp", "--keep", "0.5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_healthy(proc, port)
        fam = get_family("pi05")
        local = fam.load(ckpt, pruner=fam.build_pruner("adp", keep_ratio=0.5), dtype=torch.float32)
        for i in range(2):  # the anonymous session: one episode, as the local one
            obs = make_obs(40 + i)
            r = httpx.post(f"{url}/act", content=json_numpy.dumps(obs), timeout=60)
            assert r.status_code == 200, r.text
            np.testing.assert_array_equal(np.stack(json_numpy.loads(r.text)), local.infer(obs)["actions"])
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "platform pi05_libero" in out and "pruner adp" in out


def test_predict_answers_with_pi05(ckpt, capsys, tmp_path):
    """``vla-adp predict --family pi05``: its synthetic observation has the checkpoint's cameras."""
    import json

    fastv = tmp_path / "fastv.json"
    fastv.write_text('{"pruner": "fastv", "layer": 1}')  # the tiny VLM has 2 layers
    assert main(["predict", "--family", "pi05", "--checkpoint", str(ckpt), "--dtype", "fp32", "--device", "cpu",
                 "--pruning-config", str(fastv), "--keep", "0.5", "--repeat", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.asarray(out["actions"]).shape == (8, 7)
    assert (out["info"]["n_visual"], out["info"]["kept_visual"], out["info"]["pruner"]) == (8, 4, "fastv")
