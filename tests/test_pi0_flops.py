"""The π0 / π0.5 FLOPs model against torch's FlopCounterMode on the tiny model, and the CLI table."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vla_adp.cli import main
from vla_adp.model.pi0.flops import (parameter_counts, pi0_flops, pruned_prefix_lens)
from vla_adp.model.pi0 import Pi0Inputs, Pi0Model, published_args, tiny_args

from tests.test_pi0_prune import FixedKeep


def counted(model: Pi0Model, pruner=None) -> int:
    a = model.args
    inputs = Pi0Inputs(torch.zeros(1, a.n_cameras, 3, a.vision.image_size, a.vision.image_size),
                       torch.ones(1, a.n_cameras, dtype=torch.bool), torch.zeros(1, a.tokenizer_max_length, dtype=torch.long),
                       torch.ones(1, a.tokenizer_max_length, dtype=torch.bool), torch.zeros(1, a.max_state_dim))
    hooks = frozenset() if pruner is None else pruner.begin(None)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(inputs, pruner, hooks, noise=torch.zeros(1, a.chunk_size, a.max_action_dim))
    return fc.get_total_flops()


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_analytic_flops_equal_flop_counter(family):
    args = tiny_args(family)
    model = Pi0Model(args).eval()
    assert pi0_flops(args).total == counted(model)
    n = 3  # keep 3 of the 8 image tokens from layer 1 on
    lens = [args.prefix_len, args.tokenizer_max_length + n]
    assert pi0_flops(args, lens).total == counted(model, FixedKeep(1, torch.arange(n)[None], (n, 0)))
    assert pruned_prefix_lens(args, 3 / 8, 1) == lens


def test_published_pi05_shape():
    a = published_args("pi05")
    assert a.prefix_len == 3 * 256 + 200 and a.suffix_len == 50
    counts = parameter_counts(a)
    # PaliGemma 3B (SigLIP So400m + projector 415M, Gemma 2B 2.51B incl. the 257k×2048 embedding); the
    # "300M" expert is 311M as a plain Gemma (π0) and 428M with π0.5's adaRMS dense layers (3·1024² per norm)
    assert 2.9e9 < counts["vision"] + counts["vlm"] < 3.0e9 and 4.2e8 < counts["expert"] < 4.3e8
    assert 3.1e8 < parameter_counts(published_args("pi0"))["expert"] < 3.2e8
    f = pi0_flops(a)
    assert f.steps == 10 and f.expert == 10 * f.expert_step
    pruned = pi0_flops(a, pruned_prefix_lens(a, 0.5, 0))
    assert pruned.vision == f.vision and pruned.prefix < f.prefix and pruned.expert_step < f.expert_step


def test_cli_prints_the_pi05_table(capsys):
    assert main(["flops", "--family", "pi05", "--keep", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "keep 1 (unpruned)" in out and "keep 0.5 from layer 0" in out and "parameters" in out
    assert main(["flops", "--family", "pi05", "--keep", "0"]) == 2


def test_flops_with_a_masked_camera_and_prompt_padding():
    """LIBERO's shape: 2 of 3 cameras, a short prompt; the seam's prefix leaves the masked slot (no
    SigLIP) and the prompt padding out."""
    args = tiny_args("pi05", n_cameras=3)
    model = Pi0Model(args).eval()
    a = args
    inputs = Pi0Inputs(torch.zeros(1, 3, 3, a.vision.image_size, a.vision.image_size),
                       torch.tensor([[True, True, False]]), torch.zeros(1, a.tokenizer_max_length, dtype=torch.long),
                       torch.arange(a.tokenizer_max_length)[None] < 5, torch.zeros(1, a.max_state_dim))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(inputs, noise=torch.zeros(1, a.chunk_size, a.max_action_dim))
    assert fc.get_total_flops() == pi0_flops(args, pruned_prefix_lens(args, 1.0, 0, cameras=2, prompt_tokens=5),
                                             cameras=2).total


def test_bench_pi05_rows_on_the_tiny_model(capsys, tmp_path):
    """`vla-adp bench --family pi05`: every pruner on one clock, FLOPs-predicted speed-ups from the
    prefix lengths each query ran, refusals reported as rows (not raised)."""
    import json

    out = tmp_path / "pi05.json"
    assert main(["bench", "--family", "pi05", "--model", "tiny", "--pruners", "adp", "fastv", "vla_pruner", "lightvla",
                 "--keep", "0.5", "--reps", "2", "--warmup", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| adp@0.5 | 4 |" in text and "lightvla@0.5 | error: ValueError: pruner 'lightvla' does not run on π0" in text
    run = json.loads(out.read_text())["runs"][0]
    rows = {r["label"]: r for r in run["cases"]}
    assert run["prefix_len"] == 8 + 12 and run["n_visual"] == 8
    a = tiny_args("pi05", n_cameras=3)
    assert rows["none"]["flops"] == pi0_flops(a, [20, 20], cameras=2).total
    for label in ("adp@0.5", "fastv:layer=1@0.5", "vla_pruner:layer=1,action_layer=1@0.5"):
        r = rows[label]
        assert r["pruned_share"] == 1.0 and r["kept_visual"] == 4, label  # VLA-Pruner's warm-up is over
        assert r["speedup"]["predicted"] == pytest.approx(rows["none"]["flops"] / r["flops"])
    assert main(["bench", "--family", "pi05", "--model", "7b"]) == 2


@pytest.mark.parametrize("families,match", [
    (["pi05", "oft"], r"--family pi05 is timed by its own harness .* alone in a call: drop \['oft'\]"),
    (["pi0"], r"--family pi0: bench times π0.5 only among the flow-matching families"),
])
def test_bench_pi05_is_not_mixed_with_other_families(capsys, families, match):
    import re

    assert main(["bench", "--family", *families, "--model", "tiny"]) == 2
    assert re.search(match, capsys.readouterr().err)
