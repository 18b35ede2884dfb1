"""Broken checkpoint folders through the CLI: every kind of breakage ends in one line on stderr that
names the broken file, exit status 2, and no traceback; nothing in a folder runs code when loaded.

Each case copies the tiny checkpoint (1.3 MB), breaks one thing, and runs ``vla-adp predict`` in
process: an exception the CLI does not turn into a message would escape ``main`` and fail the test.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vla_adp.cli import main


class RunsCode:
    """Unpickling this creates a marker file: a pickle that runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def edit_json(name, edit):
    def breaker(folder: Path):
        path = folder / name
        data = json.loads(path.read_text())
        edit(data)  # in place (what it returns is ignored)
        path.write_text(json.dumps(data))
    return breaker


def write(name, content: bytes | str):
    def breaker(folder: Path):
        path = folder / name if "*" not in name else next(folder.glob(name))
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return breaker


def unlink(pattern):
    return lambda folder: [p.unlink() for p in folder.glob(pattern)]


def first_shard(folder: Path) -> Path:
    return sorted(folder.glob("model-*.safetensors"))[0]


def edit_shard(edit):
    def breaker(folder: Path):
        shard = first_shard(folder)
        state = load_file(str(shard))
        edit(state)
        save_file(state, str(shard))
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard.name}
        index["weight_map"].update({k: shard.name for k in state})
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return breaker


def first_weight(state) -> str:
    return next(k for k in sorted(state) if k.endswith(".weight") and state[k].ndim == 2)


def edit_head(edit):
    def breaker(folder: Path):
        path = next(folder.glob("action_head--*"))
        state = torch.load(path, weights_only=True)
        out = edit(state)
        torch.save(state if out is None else out, path)
    return breaker


def entry(edit):
    """Edit the (only) dataset entry of dataset_statistics.json."""
    def apply(stats):
        edit(next(iter(stats.values())))
    return edit_json("dataset_statistics.json", apply)


SHARD1 = "model-00001-of-00003.safetensors"
STATS, CONFIG, INDEX = "dataset_statistics.json", "config.json", "model.safetensors.index.json"

# name -> (breaker, the file the message must name, a fragment of the message)
BROKEN = {
    # config.json
    "config missing": (unlink(CONFIG), CONFIG, "missing file"),
    "config empty": (write(CONFIG, ""), CONFIG, "not valid JSON"),
    "config not json": (write(CONFIG, "{oops"), CONFIG, "not valid JSON"),
    "config a list": (write(CONFIG, "[]"), CONFIG, "expected a JSON object, found a JSON array"),
    "config null": (write(CONFIG, "null"), CONFIG, "found a JSON null"),
    "config not utf-8": (write(CONFIG, b'{"a": "\xff\xfe"}'), CONFIG, "not UTF-8"),
    "config latin-1 text": (write(CONFIG, '{"model_type": "caf\u00e9"}'.encode("latin-1")), CONFIG, "not UTF-8"),
    "config deeply nested": (write(CONFIG, "[" * 100000 + "]" * 100000), CONFIG, "config.json"),
    "text_config missing key": (edit_json(CONFIG, lambda c: c["text_config"].pop("hidden_size")), CONFIG, "'hidden_size'"),
    "text_config a string": (edit_json(CONFIG, lambda c: c.update(text_config="llama")), CONFIG, "'text_config' is a JSON string"),
    "hidden_size a string": (edit_json(CONFIG, lambda c: c["text_config"].update(hidden_size="abc")), CONFIG, "positive integer"),
    "zero heads": (edit_json(CONFIG, lambda c: c["text_config"].update(num_attention_heads=0)), CONFIG, "positive integer"),
    "heads do not divide": (edit_json(CONFIG, lambda c: c["text_config"].update(num_attention_heads=7)), CONFIG, "not divisible"),
    "rms_norm_eps negative": (edit_json(CONFIG, lambda c: c["text_config"].update(rms_norm_eps=-1)), CONFIG, "positive number"),
    "wrong layer count": (edit_json(CONFIG, lambda c: c["text_config"].update(num_hidden_layers=3)), CONFIG, "3 decoder layers"),
    "rope scaling": (edit_json(CONFIG, lambda c: c["text_config"].update(rope_scaling={"type": "linear"})), CONFIG, "rope_scaling"),
    "no timm ids": (edit_json(CONFIG, lambda c: c.pop("timm_model_ids")), CONFIG, "timm_model_ids"),
    "timm ids not strings": (edit_json(CONFIG, lambda c: c.update(timm_model_ids=[1, 2])), CONFIG, "timm_model_ids"),
    "unknown timm model": (edit_json(CONFIG, lambda c: c.update(timm_model_ids=["no_such_vit"] * 2)), CONFIG, "no_such_vit"),
    "image sizes disagree": (edit_json(CONFIG, lambda c: c.update(image_sizes=[448, 448])), CONFIG, "image_sizes"),
    "image sizes a string": (edit_json(CONFIG, lambda c: c.update(image_sizes="224")), CONFIG, "image_sizes"),
    "fused flag a string": (edit_json(CONFIG, lambda c: c.update(use_fused_vision_backbone="false")), CONFIG,
                            "use_fused_vision_backbone"),
    "num_images a string": (edit_json(CONFIG, lambda c: c.update(num_images_in_input="two")), CONFIG, "num_images_in_input"),
    "num_images zero": (edit_json(CONFIG, lambda c: c.update(num_images_in_input=0)), CONFIG, "num_images_in_input"),
    "vla_adp a list": (edit_json(CONFIG, lambda c: c.update(vla_adp=[])), CONFIG, "'vla_adp' is a JSON array"),
    "platform malformed": (edit_json(CONFIG, lambda c: c.update(vla_adp={"platform": {"name": "x"}})), CONFIG, "vla_adp.platform"),
    "platform a string": (edit_json(CONFIG, lambda c: c.update(vla_adp={"platform": "libero"})), CONFIG, "vla_adp.platform"),
    "center_crop a string": (edit_json(CONFIG, lambda c: c.update(vla_adp={"center_crop": "no"})), CONFIG, "center_crop"),
    # dataset_statistics.json
    "stats missing": (unlink(STATS), STATS, "missing file"),
    "stats not json": (write(STATS, "{"), STATS, "not valid JSON"),
    "stats a list": (write(STATS, "[]"), STATS, "found a JSON array"),
    "stats empty": (write(STATS, "{}"), STATS, "no dataset entries"),
    "stats not utf-8": (write(STATS, b"\xff"), STATS, "not UTF-8"),
    "stats entry a list": (edit_json(STATS, lambda s: s.update({k: [] for k in s})), STATS, "is a JSON array"),
    "stats no action": (entry(lambda e: e.pop("action")), STATS, "no 'action' object"),
    "stats q01 too short": (entry(lambda e: e["action"].update(q01=e["action"]["q01"][:6])), STATS, "action.q01 is 6 values, expected 7"),
    "stats q99 a string": (entry(lambda e: e["action"].update(q99="0.5")), STATS, "action.q99 is a JSON string"),
    "stats q99 holds a string": (entry(lambda e: e["action"]["q99"].__setitem__(0, "x")), STATS, "non-number"),
    "stats NaN": (entry(lambda e: e["action"]["q01"].__setitem__(2, float("nan"))), STATS, "non-finite"),
    "stats mask too long": (entry(lambda e: e["action"].update(mask=[True] * 8)), STATS, "action.mask"),
    "stats mask of ints": (entry(lambda e: e["action"].update(mask=[1] * 7)), STATS, "action.mask"),
    "stats no proprio": (entry(lambda e: e.pop("proprio")), STATS, "no 'proprio' object"),
    "stats proprio too long": (entry(lambda e: e["proprio"].update(q01=[0.0] * 9)), STATS, "proprio.q01 is 9 values, expected 8"),
    # weights
    "index missing": (unlink(INDEX), INDEX, "missing"),
    "index not json": (write(INDEX, "{"), INDEX, "not valid JSON"),
    "index a list": (write(INDEX, "[1]"), INDEX, "found a JSON array"),
    "index without weight_map": (edit_json(INDEX, lambda i: i.pop("weight_map")), INDEX, "no 'weight_map'"),
    "index names a missing shard": (unlink(SHARD1), SHARD1, "which is missing"),
    "index shard outside the folder": (edit_json(INDEX, lambda i: i["weight_map"].update({next(iter(i["weight_map"])): "../x.safetensors"})), INDEX, "same folder"),
    "shard truncated": (lambda f: first_shard(f).write_bytes(first_shard(f).read_bytes()[:200]), SHARD1, "not a readable safetensors"),
    "shard garbage": (write(SHARD1, b"\x00" * 64), SHARD1, "not a readable safetensors"),
    "shard data cut short": (lambda f: first_shard(f).write_bytes(first_shard(f).read_bytes()[:-100]), SHARD1, SHARD1),
    "int32 tensor": (edit_shard(lambda s: s.update({(k := first_weight(s)): s[k].to(torch.int32)})), SHARD1, "stored as I32"),
    "NaN in a tensor": (edit_shard(lambda s: s[first_weight(s)].view(-1).__setitem__(0, float("nan"))), SHARD1, "non-finite"),
    "shape mismatch": (edit_shard(lambda s: s.update({first_weight(s): torch.zeros(3, 3)})), SHARD1, "has shape (3, 3)"),
    "unexpected key": (edit_shard(lambda s: s.update({"projector.extra": torch.zeros(2)})), SHARD1, "unexpected key"),
    "missing key": (edit_shard(lambda s: s.pop(first_weight(s))), SHARD1, "missing key"),
    # side modules
    "no action head": (unlink("action_head--*"), "action_head--<step>_checkpoint.pt", "missing"),
    "two action heads": (lambda f: shutil.copy(next(f.glob("action_head--*")), f / "action_head--9_checkpoint.pt"),
                         "action_head--9_checkpoint.pt", "expected one"),
    "action head garbage": (write("action_head--*", b"not a state dict"), "action_head--0_checkpoint.pt", "cannot read"),
    "action head empty": (write("action_head--*", b""), "action_head--0_checkpoint.pt", "cannot read"),
    "action head a list": (edit_head(lambda s: [1, 2]), "action_head--0_checkpoint.pt", "expected a state dict"),
    "action head holds a number": (edit_head(lambda s: s.update({"module.model.extra": 3})), "action_head--0_checkpoint.pt", "expected a tensor"),
    "action head int tensor": (edit_head(lambda s: s.update({(k := next(iter(s))): s[k].to(torch.int64)})), "action_head--0_checkpoint.pt", "stored as torch.int64"),
    "action head wrong shape": (edit_head(lambda s: {"module.model.fc2.weight": torch.zeros(7, 3)}), "action_head--0_checkpoint.pt", "action_head--0_checkpoint.pt"),
    "proprio projector garbage": (write("proprio_projector--*", b"\x80\x04junk"), "proprio_projector--0_checkpoint.pt", "cannot read"),
    # tokenizer, preprocessor
    "tokenizer missing": (unlink("tokenizer.model"), "tokenizer.model", "missing file"),
    "tokenizer garbage": (write("tokenizer.model", b"\x00\x01garbage" * 10), "tokenizer.model", "not a readable SentencePiece"),
    "tokenizer empty": (write("tokenizer.model", b""), "tokenizer.model", "tokenizer.model"),
    "preprocessor not json": (write("preprocessor_config.json", "{"), "preprocessor_config.json", "not valid JSON"),
    "preprocessor means too short": (edit_json("preprocessor_config.json", lambda p: p.update(means=[[0.5, 0.5]] * 2)), "preprocessor_config.json", "3 finite numbers"),
    "preprocessor stds zero": (edit_json("preprocessor_config.json", lambda p: p.update(stds=[[0, 0, 0]] * 2)), "preprocessor_config.json", "> 0"),
    "preprocessor means not a list": (edit_json("preprocessor_config.json", lambda p: p.update(means="imagenet")), "preprocessor_config.json", "one entry per vision tower"),
}


@pytest.fixture
def broken(tiny_ckpt, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, folder)
    return folder


def test_at_least_thirty_kinds():
    assert len(BROKEN) >= 30, len(BROKEN)


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_checkpoint_is_one_line_naming_the_file(broken, case, capsys):
    breaker, name, fragment = BROKEN[case]
    breaker(broken)
    code = main(["predict", "--checkpoint", str(broken), "--device", "cpu", "--dtype", "fp32", "--repeat", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2, (case, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("vla-adp predict: error: ") and name in err and fragment in err, err


def test_a_pickle_that_runs_code_is_refused_without_running(broken, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    next(broken.glob("action_head--*")).write_bytes(pickle.dumps({"module.model.fc1.weight": RunsCode(marker)}))
    code = main(["predict", "--checkpoint", str(broken), "--device", "cpu", "--dtype", "fp32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "action_head--0_checkpoint.pt: cannot read the state dict safely" in err, err
    assert len(err.splitlines()) == 1 and not marker.exists()


def test_a_checkpoint_that_cannot_serve_does_not_start_a_server(broken, capsys):
    entry(lambda e: e["action"].update(q01=e["action"]["q01"][:6]))(broken)
    assert main(["serve", "--checkpoint", str(broken), "--device", "cpu", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "dataset_statistics.json" in err and "expected 7 finite numbers" in err and len(err.splitlines()) == 1


# -- observation files -------------------------------------------------------------------------
def test_predict_reads_npz_and_json_and_refuses_pickles(tiny_ckpt, tmp_path, capsys):
    import json_numpy
    import numpy as np

    from tests.conftest import make_obs

    obs = make_obs(3)
    np.savez(tmp_path / "obs.npz", **obs)
    (tmp_path / "obs.json").write_text(json_numpy.dumps(obs))
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in obs.items()}
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    outs = []
    for f in ("obs.npz", "obs.json", "plain.json"):
        assert main(["predict", "--checkpoint", str(tiny_ckpt), "--obs", str(tmp_path / f), "--device", "cpu",
                     "--dtype", "fp32", "--repeat", "1", "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out)["actions"])
    assert outs[0] == outs[1] == outs[2]
    marker = tmp_path / "code-ran"
    (tmp_path / "obs.pkl").write_bytes(pickle.dumps({"full_image": RunsCode(marker)}))
    bad = {"obs.pkl": "pickle files are not read", "bad.json": "not valid JSON", "state.json": "state has shape [3]",
           "obj.npz": "allow_pickle", "junk.npz": "not a readable .npz"}
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "state.json").write_text(json_numpy.dumps({**obs, "state": np.zeros(3)}))
    np.savez(tmp_path / "obj.npz", full_image=np.array([{"a": 1}], dtype=object))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04junk")
    for f, fragment in bad.items():
        assert main(["predict", "--checkpoint", str(tiny_ckpt), "--obs", str(tmp_path / f), "--device", "cpu",
                     "--dtype", "fp32"]) == 2
        err = capsys.readouterr().err.strip()
        assert f in err and fragment in err and len(err.splitlines()) == 1, err
    assert not marker.exists()
