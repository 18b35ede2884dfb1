"""Roofline floors: the arithmetic against values worked out by hand from the 7B's shapes."""

import pytest

from vla_adp.cli import main
from vla_adp.cost import roofline as R
from vla_adp.model.config import LlamaArgs, openvla_7b_args

H100 = R.GPUS["h100-sxm"]
D, M, L = 4096, 11008, 32


def test_gpu_specs_and_ridge():
    assert (H100.bandwidth_gbs, H100.bf16_tflops) == (3350, 989.4)
    assert H100.ridge == pytest.approx(989.4e12 / 3350e9)  # ≈ 295 FLOP per byte
    assert R.get_gpu("H100") is H100 and R.get_gpu("4090") is R.GPUS["rtx4090"]
    assert R.GPUS["h200"].bf16_tflops == H100.bf16_tflops and R.GPUS["h200"].bandwidth_gbs == 4800
    with pytest.raises(ValueError, match="unknown GPU 'v100'"):
        R.get_gpu("v100")
    with pytest.raises(ValueError, match="positive"):
        R.GPU("bad", 0, 1, "")


def test_stage_floor_is_the_larger_of_memory_and_compute_time():
    st = R.Stage("x", flops=1e12, bytes=1e9)
    assert st.memory_ms(H100) == pytest.approx(1e3 * 1e9 / 3350e9)  # 0.2985 ms
    assert st.compute_ms(H100) == pytest.approx(1e3 / 989.4)  # 1.0107 ms
    assert st.floor_ms(H100) == pytest.approx(1e3 / 989.4) and st.bound(H100) == "compute"
    assert st.floor_ms(H100, derate=0.5) == pytest.approx(2e3 / 989.4)
    light = R.Stage("y", flops=1e9, bytes=1e9)
    assert light.bound(H100) == "memory" and light.floor_ms(H100) == pytest.approx(0.2985, abs=1e-4)


def test_llm_stage_of_the_unpruned_7b_by_hand():
    per_layer_params = 2 * D * D + 2 * D * D + 3 * D * M  # Q, O, K, V (no GQA), SwiGLU
    assert R.llm_layer_params(LlamaArgs()) == per_layer_params == 202_375_168
    st = R.llm_stage(LlamaArgs(), [603] * L)
    # consistent convention per layer: 4·S²·D + 8·S·D² + 6·S·D·M at S = 603
    per_layer = 4 * 603**2 * D + 8 * 603 * D**2 + 6 * 603 * D * M
    assert per_layer == 250_021_822_464
    assert st.flops == L * per_layer  # 8.0007 TFLOP
    assert st.bytes == 2 * (L * per_layer_params + 2 * 603 * D)  # 12.96 GB: the weights, read once
    assert st.floor_ms(H100) == pytest.approx(1e3 * L * per_layer / 989.4e12)  # 8.086 ms, compute-bound
    assert st.memory_ms(H100) == pytest.approx(3.869, abs=1e-3)


def test_a_pruned_decoder_becomes_memory_bound_and_mixed_lengths_add_per_part():
    llm = LlamaArgs()
    adp = R.llm_stage(llm, [245] * L)  # ADP ρ = 0.3: 603 − 512 + 154
    assert adp.bound(H100) == "memory" and adp.floor_ms(H100) == pytest.approx(adp.memory_ms(H100))
    fastv = R.llm_stage(llm, [603] * 3 + [245] * 29)  # cut before layer 3 (VLA-Pruner's FastV stage)
    full = R.llm_stage(llm, [603] * L).floor_ms(H100) / L
    short = adp.floor_ms(H100) / L
    assert fastv.bound(H100) == "mixed"
    assert fastv.floor_ms(H100) == pytest.approx(3 * full + 29 * short, rel=1e-4)  # io terms differ slightly
    assert fastv.floor_ms(H100) > max(fastv.memory_ms(H100), fastv.compute_ms(H100))
    with pytest.raises(ValueError, match="one sequence length per layer"):
        R.llm_stage(llm, [603])


def test_vision_projector_and_head_by_hand():
    a = openvla_7b_args()
    dino, siglip = 4 * 1024**2 + 2 * 1024 * 4096, 4 * 1152**2 + 2 * 1152 * 4304
    assert [R.vit_block_params(t) for t in a.towers] == [dino, siglip] == [12_582_912, 15_224_832]
    # DINOv2: 256 patches + class + 4 registers, 23 of 24 blocks; SigLIP: 256 tokens, 26 of 27 blocks
    per_view = (23 * (2 * 261 * dino + 4 * 261**2 * 1024) + 2 * 256 * 588 * 1024
                + 26 * (2 * 256 * siglip + 4 * 256**2 * 1152) + 2 * 256 * 588 * 1152)
    assert R.vision_stage(a).flops == 2 * per_view  # two views, one at a time
    weights = 23 * dino + 588 * 1024 + 26 * siglip + 588 * 1152
    assert R.vision_stage(a).bytes == 2 * (2 * weights + 6 * 224 * 224 * 4 + 256 * 2176 * 2)
    proj = 2176 * 8704 + 8704 * 4096 + 4096 * 4096
    assert R.projector_stage(a).flops == 2 * 512 * proj + 2 * (8 * 4096 + 4096 * 4096)
    head = 7 * 4096 * 4096 + 2 * 4096 * 4096 + 4096 * 7
    assert R.head_stage(a).flops == 2 * 8 * head and R.head_stage(a).bytes == 2 * head + 56 * 4096 * 2


def test_oft_query_floor_and_where_pruning_stops_paying():
    a = openvla_7b_args()
    assert R.oft_seq_len(a, 32) == 603
    full, pruned = R.oft_stages(a), R.oft_stages(a, kept=154)
    assert [s.name for s in full] == ["vision", "projector", "llm", "head"]
    assert [s.name for s in pruned] == ["vision", "projector", "scoring", "gather", "llm", "head"]
    assert R.total(full, H100) == pytest.approx(9.07, abs=0.01)
    assert R.total(pruned, H100) == pytest.approx(4.88, abs=0.01)  # floor speedup 1.86
    keep = R.memory_bound_keep(a, H100)
    kept = round(keep * 512)
    lens = lambda k: [603 - 512 + k] * L  # noqa: E731
    assert R.llm_stage(a.llm, lens(kept)).bound(H100) == "compute"
    assert R.llm_stage(a.llm, lens(kept - 1)).bound(H100) == "memory"
    # By hand: compute = memory at S·2·P ≈ ridge·bytes, P = 6.476e9 → S ≈ 295 → kept ≈ 203 of 512
    assert 0.38 < keep < 0.41
    assert R.memory_bound_keep(a, R.GPUS["a100"]) < keep  # a lower ridge keeps pruning worthwhile longer
    with pytest.raises(ValueError, match="kept visual tokens"):
        R.oft_stages(a, kept=600)


def test_openvla_decoding_reads_every_weight_per_token():
    a = openvla_7b_args(n_images=1)
    stages = {s.name: s for s in R.openvla_stages(a, n_prompt=20, action_tokens=2)}
    ctx = 1 + 256 + 20 + 1  # one decode step after the prefill: context + the first action token
    step_bytes = 2 * (L * (R.llm_layer_params(a.llm) + ctx * 2 * D) + D * 32064)
    assert stages["decode"].bytes == step_bytes
    assert stages["decode"].bound(H100) == "memory"
    # Pruning shortens the prefill but hardly the decode steps: the floor barely moves.
    full, pruned = R.openvla_stages(a), R.openvla_stages(a, kept=77)
    assert R.total(full, H100) / R.total(pruned, H100) < 1.05


def test_scorers_cost_little_and_unknown_ones_are_refused():
    llm = LlamaArgs()
    assert R.scoring_stage(llm, "random", 512, 34, 603).flops == 0
    adp = R.scoring_stage(llm, "adp", 512, 34, 603)
    assert adp.bytes >= 2 * 2 * D * D  # W_Q and W_K of the scoring layer
    assert R.scoring_stage(llm, "vla_pruner", 512, 34, 603).flops > R.scoring_stage(llm, "fastv", 512, 34, 603).flops
    with pytest.raises(ValueError, match="unknown scorer"):
        R.scoring_stage(llm, "magic", 512, 34, 603)


def test_bench_predict_prints_floors(capsys):
    assert main(["bench", "--predict", "--gpu", "h100", "h200", "--keep", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H100 SXM5" in out and "NVIDIA H200" in out and "OpenVLA (1 view" in out
    assert "| adp@0.3 | 154 |" in out and "memory-bound below ρ ≈ 0.39" in out
    assert main(["bench", "--predict", "--gpu", "v100"]) == 2
    assert "unknown GPU" in capsys.readouterr().err
    assert main(["bench", "--predict", "--shape", "pi05"]) == 2
    assert "unknown query shape" in capsys.readouterr().err
