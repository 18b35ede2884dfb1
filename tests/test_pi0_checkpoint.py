"""π0 / π0.5 folders in LeRobot's hub layout: tiny maker, strict loader, policy glue."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vla_adp.model.checkpoint import CheckpointError
from vla_adp.model.pi0.checkpoint import load_pi0_checkpoint, to_module_key, to_published_key
from vla_adp.pi0_policy import Pi0Policy
from vla_adp.model.pi0.processor import discretize_state, normalize, prompt_text, resize_with_pad, unnormalize
from vla_adp.model.pi0.tiny import make_tiny_pi0_checkpoint


@pytest.fixture(scope="module", params=["pi05", "pi0"])
def tiny_pi0(request, tmp_path_factory):
    return make_tiny_pi0_checkpoint(tmp_path_factory.mktemp(request.param) / f"{request.param}_libero", request.param)


def obs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"observation.images.image": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
            "observation.images.image2": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
            "observation.state": rng.normal(size=8).astype(np.float32), "task": "open the top drawer"}


def copy(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


def test_layout_is_lerobots(tiny_pi0):
    names = sorted(p.name for p in tiny_pi0.iterdir())
    assert names == ["config.json", "model.safetensors", "policy_postprocessor.json",
                     "policy_postprocessor_step_0_unnormalizer_processor.safetensors", "policy_preprocessor.json",
                     "policy_preprocessor_step_3_normalizer_processor.safetensors", "tokenizer.model", "vla_adp.json"]
    keys = load_file(tiny_pi0 / "model.safetensors")
    assert all(k.startswith("model.paligemma_with_expert.") or k.startswith("model.action_") or
               k.startswith("model.time_mlp") or k.startswith("model.state_proj") for k in keys)
    assert "model.paligemma_with_expert.paligemma.model.vision_tower.vision_model.post_layernorm.weight" in keys
    config = json.loads((tiny_pi0 / "config.json").read_text())
    assert config["empty_cameras"] == 1 and config["num_inference_steps"] == 10


def test_round_trip(tiny_pi0, tmp_path):
    ckpt = load_pi0_checkpoint(tiny_pi0)
    policy = Pi0Policy(ckpt)
    a = policy.infer(obs())["actions"]
    assert a.shape == (ckpt.args.chunk_size, 7) and np.isfinite(a).all()
    # bare keys (openpi-converted checkpoints) and the tied lm_head instead of the embeddings also load
    folder = copy(tiny_pi0, tmp_path)
    state = {k[len("model."):]: v for k, v in load_file(folder / "model.safetensors").items()}
    embed = "paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    state["paligemma_with_expert.paligemma.lm_head.weight"] = state.pop(embed)
    state["paligemma_with_expert.gemma_expert.lm_head.weight"] = torch.zeros(ckpt.args.vocab_size, 16)
    save_file(state, str(folder / "model.safetensors"))
    other = Pi0Policy.load(folder)
    ours, theirs = ckpt.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same weights, bit for bit
    # CPU kernels round differently with the buffers' alignment inside the file: 2e-7 seen
    np.testing.assert_allclose(a, other.infer(obs())["actions"], atol=1e-6, rtol=0)


def test_key_maps_are_inverse():
    for key in ("vision.encoder.layers.0.mlp.fc1.weight", "vlm.layers.1.self_attn.q_proj.weight",
                "expert.norm.dense.bias", "projector.weight", "action_in_proj.weight"):
        assert to_module_key(to_published_key(key)) == key


def edit_weights(folder, fn):
    path = folder / "model.safetensors"
    state = load_file(path)
    fn(state)
    save_file(state, str(path))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model.action_out_proj.bias"), "missing key 'action_out_proj.bias'"),
    (lambda s: s.__setitem__("model.extra.weight", torch.zeros(1)), "unexpected key 'extra.weight'"),
    (lambda s: s.__setitem__("model.action_in_proj.weight", torch.zeros(16, 9)),
     r"key 'action_in_proj.weight' has shape \(16, 9\), expected \(16, 8\)"),
    (lambda s: s.__setitem__("bare.weight", torch.zeros(1)), "mix the policy's 'model.' prefix"),
])
def test_bad_weights_are_named(tiny_pi0, tmp_path, edit, message):
    folder = copy(tiny_pi0, tmp_path)
    edit_weights(folder, edit)
    with pytest.raises(CheckpointError, match=message):
        load_pi0_checkpoint(folder)


def test_adarms_mismatch_is_named(tmp_path):
    """A π0 expert (plain RMSNorm) read as π0.5 (adaRMS): the first norm key is named."""
    folder = make_tiny_pi0_checkpoint(tmp_path / "pi0", "pi0")
    config = json.loads((folder / "config.json").read_text())
    config["type"] = "pi05"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="missing key 'paligemma_with_expert.gemma_expert.model.layers.0."
                                              "input_layernorm.dense.bias'"):
        load_pi0_checkpoint(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda d: (d / "policy_postprocessor.json").unlink(), "missing file policy_postprocessor.json"),
    (lambda d: (d / "config.json").write_text("{"), "config.json: not valid JSON"),
    (lambda d: save_file({"observation.state.q01": torch.zeros(8)},
                         str(d / "policy_preprocessor_step_3_normalizer_processor.safetensors")),
     "missing key 'observation.state.q99'"),
    (lambda d: save_file({"action.q01": torch.zeros(6), "action.q99": torch.ones(7)},
                         str(d / "policy_postprocessor_step_0_unnormalizer_processor.safetensors")),
     r"'action.q01' has shape \(6,\), expected \(7,\)"),
])
def test_bad_files_are_named(tiny_pi0, tmp_path, edit, message):
    folder = copy(tiny_pi0, tmp_path)
    edit(folder)
    with pytest.raises(CheckpointError, match=message):
        load_pi0_checkpoint(folder)


@pytest.mark.parametrize("field, value, message", [
    ("type", "pi0_fast", "type 'pi0_fast' is not one of"),
    ("paligemma_variant", "gemma_7b", "paligemma_variant 'gemma_7b' is not one of"),
    ("image_resolution", [224, 256], "must be square"),
    ("chunk_size", "50", "'chunk_size' must be int"),
    ("output_features", {"action": {"type": "ACTION", "shape": [40]}}, "action has 40 values, more than max_action_dim 8"),
    ("output_features", {}, "features lack 'action'"),
])
def test_bad_config_is_named(tiny_pi0, tmp_path, field, value, message):
    folder = copy(tiny_pi0, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_pi0_checkpoint(folder)


def test_policy_rejects_bad_observations(tiny_pi0):
    policy = Pi0Policy.load(tiny_pi0)
    bad = obs()
    del bad["observation.images.image2"]
    with pytest.raises(ValueError, match=r"lacks \['observation.images.image2'\]"):
        policy.infer(bad)
    bad = {**obs(), "observation.state": np.zeros(7)}
    with pytest.raises(ValueError, match="must have 8 values"):
        policy.infer(bad)


def test_processor_conventions():
    stats = {"q01": torch.tensor([-1.0, 0.0]), "q99": torch.tensor([1.0, 0.0]), "mean": torch.tensor([1.0, 2.0]),
             "std": torch.tensor([2.0, 4.0])}
    x = torch.tensor([0.5, 0.0])
    torch.testing.assert_close(normalize(x, stats, "QUANTILES"), torch.tensor([0.5, -1.0]))  # zero range -> eps
    for mode in ("QUANTILES", "MEAN_STD"):
        torch.testing.assert_close(unnormalize(normalize(x, stats, mode), stats, mode), x, atol=1e-6, rtol=0)
    assert discretize_state(np.array([-1.0, -0.999, 0.0, 0.999, 1.5])).tolist() == [0, 0, 128, 255, 255]
    assert prompt_text("open_the drawer\n", np.array([3, 128])) == "Task: open the drawer, State: 3 128;\nAction: "
    img = torch.rand(1, 3, 100, 200)
    out = resize_with_pad(img, 50)
    assert out.shape == (1, 3, 50, 50) and (out[:, :, :12] == -1).all() and (out[:, :, 37:] == -1).all()


def test_published_config_gives_the_published_shape(tiny_pi0, tmp_path):
    """A LeRobot pi05_libero-style config.json alone (no vla_adp.json) names the real shape; the tiny
    weights then fail: first the layers they lack (18 expected, 2 stored), then a named shape."""
    from vla_adp.model.pi0.checkpoint import args_from_config
    from vla_adp.model.pi0.config import published_args

    folder = copy(tiny_pi0, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config.update(chunk_size=50, max_state_dim=32, max_action_dim=32, image_resolution=[224, 224],
                  tokenizer_max_length=200 if config["type"] == "pi05" else 48)
    (folder / "config.json").write_text(json.dumps(config))
    assert args_from_config(config) == published_args(config["type"])  # 2 cameras + 1 empty = 3 slots
    (folder / "vla_adp.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing key 'paligemma_with_expert.gemma_expert.model.layers.10."
                                              r"input_layernorm.* \(\d+ missing in all\)"):
        load_pi0_checkpoint(folder)
    shapes = json.loads((tiny_pi0 / "vla_adp.json").read_text())
    shapes["expert"]["width"] = 32  # the weights hold a 16-wide expert
    (folder / "vla_adp.json").write_text(json.dumps(shapes))
    with pytest.raises(CheckpointError, match=r"key 'action_in_proj.bias' has shape \(16,\), expected \(32,\)"):
        load_pi0_checkpoint(folder)


def test_cli_makes_a_tiny_pi05_folder(tmp_path, capsys):
    from vla_adp.cli import main

    assert main(["make-tiny-checkpoint", str(tmp_path / "t"), "--family", "pi05"]) == 0
    assert "policy_preprocessor.json" in capsys.readouterr().out
    assert load_pi0_checkpoint(tmp_path / "t").args.pi05


def test_lerobot_mixed_precision(tiny_pi0):
    ckpt = load_pi0_checkpoint(tiny_pi0, dtype=torch.bfloat16, lerobot_mixed=True)
    dtypes = {k: v.dtype for k, v in ckpt.model.state_dict().items()}
    assert dtypes["vlm.layers.0.self_attn.q_proj.weight"] == dtypes["expert.layers.1.mlp.up_proj.weight"] == torch.bfloat16
    assert dtypes["vision.encoder.layers.0.mlp.fc1.weight"] == dtypes["vlm.layers.0.input_layernorm.weight"] == torch.float32
    assert dtypes["action_in_proj.weight"] == dtypes["expert.norm." + ("dense.weight" if ckpt.args.pi05 else "weight")] == torch.float32
    a = Pi0Policy(ckpt).infer(obs())["actions"]
    b = Pi0Policy.load(tiny_pi0).infer(obs())["actions"]
    assert np.isfinite(a).all() and np.abs(a - b).max() < 0.1 * np.abs(b).max()


def test_prompt_with_and_without_the_state(tiny_pi0):
    """π0.5 (LeRobot) puts the discretised state into the prompt; openpi's pi05_libero does not."""
    ckpt = load_pi0_checkpoint(tiny_pi0)
    with_state, without = Pi0Policy(ckpt, discrete_state=True), Pi0Policy(ckpt, discrete_state=False)
    a, b = with_state.inputs(obs()), without.inputs(obs())
    assert a.token_mask.sum() > b.token_mask.sum()
    other = {**obs(), "observation.state": obs()["observation.state"] + 1.0}
    assert not torch.equal(with_state.inputs(other).tokens, a.tokens)
    assert torch.equal(without.inputs(other).tokens, b.tokens)


def test_policy_on_the_seam_with_a_registry_pruner(tiny_pi0):
    """Pi0Policy.load has Policy.load's shape; sessions keep their own pruner state; info carries the
    query record's fields; OFT-only settings are refused."""
    from vla_adp.policy import PolicyConfig
    from vla_adp.pruning.pi0 import build_pi0_pruner

    pruner = build_pi0_pruner("adp", keep_ratio=0.5, gate={"schedule": "static"})
    policy = Pi0Policy.load(tiny_pi0, None, pruner, None, torch.float32, "cpu", seed=3)
    out = policy.infer(obs())
    info = out["info"]
    assert info["pruner"] == "adp" and info["pruned"] and info["n_visual"] == 8 and info["kept_visual"] == 4
    assert info["kept_per_view"] == [2, 2] and [len(k) for k in info["kept_indices"]] == [2, 2]
    assert info["flops"] == info["flops_model"] + info["scoring_flops"] and info["flops_model"] < info["flops_full"]
    assert info["gate_state"] == 1 and set(info["timing_ms"]) >= {"vision", "prefix", "denoise", "prune", "total"}
    unpruned = Pi0Policy.load(tiny_pi0, seed=3).infer(obs())
    assert unpruned["info"]["flops"] == info["flops_full"] and not np.array_equal(unpruned["actions"], out["actions"])
    # a second session starts its own episode: same query index -> same noise -> same actions
    session = policy.new_session()
    again = policy.infer(obs(), session)
    assert again["info"]["query"] == 0 and np.array_equal(again["actions"], out["actions"])
    assert policy.session.query_index == 1 and session.pruner is not policy.pruner
    results = policy.infer_batch([obs(), {"task": "x"}], [policy.new_session(), policy.new_session()])
    assert np.array_equal(results[0]["actions"], out["actions"]) and isinstance(results[1], ValueError)
    with pytest.raises(ValueError, match="PolicyConfig settings are OpenVLA-OFT's"):
        Pi0Policy.load(tiny_pi0, PolicyConfig(center_crop=False))
