"""OpenVLA (autoregressive) against transformers' ``LlamaForCausalLM`` + ``generate`` (independent reference).

The reference reads the decoder weights straight from the tiny checkpoint's safetensors shards
(``language_model.model.*`` -> ``model.*``, ``language_model.lm_head.weight``), builds its config from
``config.json``'s ``text_config``, and gets the multimodal embeddings in upstream's order
(``modeling_prismatic.py``: BOS, projected patches, the rest of the prompt). Greedy decoding with the
KV cache on both sides, fp32: every step's logits within ATOL, the same action tokens, and actions
decoded with upstream's formula written out here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from vla_adp.model.openvla.checkpoint import load_openvla_checkpoint
from vla_adp.model.openvla.openvla import OpenVLAInputs
from vla_adp.model.openvla.tiny import make_tiny_openvla_checkpoint
from vla_adp.model.tokenizer import PromptTokenizer

ATOL = 1e-5
N_TOKENS = 7


def reference_llm(folder) -> LlamaForCausalLM:
    text = json.loads((folder / "config.json").read_text())["text_config"]
    cfg = LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"}, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    state = {}
    for shard in sorted(folder.glob("model-*.safetensors")):
        for key, value in load_file(str(shard)).items():
            if key.startswith("language_model."):
                state[key[len("language_model."):]] = value.float()
    model.load_state_dict(state, strict=True)
    return model


def upstream_actions(token_ids: np.ndarray, vocab_size: int, pad: int, n_bins: int = 256) -> np.ndarray:
    """``predict_action``'s decoding (openvla/openvla modeling_prismatic.py), written out independently."""
    bins = np.linspace(-1, 1, n_bins)
    centers = (bins[:-1] + bins[1:]) / 2.0
    discretized = np.clip((vocab_size - pad) - token_ids - 1, a_min=0, a_max=centers.shape[0] - 1)
    return centers[discretized]


@pytest.fixture(scope="module", params=[4, 2], ids=["mha", "gqa"])
def pair(request, tmp_path_factory):
    folder = make_tiny_openvla_checkpoint(tmp_path_factory.mktemp("ovla") / "openvla-7b", seed=3,
                                          llm_layers=3, n_kv_heads=request.param)
    ckpt = load_openvla_checkpoint(folder, dtype=torch.float32)
    return ckpt, reference_llm(folder)


def query(ckpt, instruction: str, seed: int) -> OpenVLAInputs:
    ids = torch.tensor([PromptTokenizer(ckpt.tokenizer_file).prompt_ids(instruction)])
    pixels = torch.randn(1, 6, 224, 224, generator=torch.Generator().manual_seed(seed))
    return OpenVLAInputs(pixels, ids)


def reference_embeddings(ckpt, hf: LlamaForCausalLM, inputs: OpenVLAInputs) -> torch.Tensor:
    with torch.no_grad():
        patches = ckpt.model.projector(ckpt.model.vision_backbone(inputs.pixels))
        tok = hf.get_input_embeddings()(inputs.input_ids)
    return torch.cat([tok[:, :1], patches, tok[:, 1:]], dim=1)


@pytest.mark.parametrize("instruction,seed", [("open the drawer", 0), ("push the red button down", 1)])
def test_prefill_logits_match_transformers(pair, instruction, seed):
    ckpt, hf = pair
    inputs = query(ckpt, instruction, seed)
    with torch.no_grad():
        ref = hf(inputs_embeds=reference_embeddings(ckpt, hf, inputs)).logits
        pre = ckpt.model.prefill(inputs)
        got = ckpt.model.language_model.logits(pre.hidden)
    assert got.shape == ref.shape == (1, pre.layout.length, ckpt.args.llm.vocab_size)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("instruction,seed", [("open the drawer", 0), ("push the red button down", 1),
                                              ("close the window", 2)])
def test_greedy_generation_matches_transformers(pair, instruction, seed):
    ckpt, hf = pair
    inputs = query(ckpt, instruction, seed)
    with torch.no_grad():
        ref = hf.generate(inputs_embeds=reference_embeddings(ckpt, hf, inputs), max_new_tokens=N_TOKENS,
                          do_sample=False, use_cache=True, output_logits=True, return_dict_in_generate=True,
                          pad_token_id=ckpt.args.n_real_vocab, eos_token_id=None)
        out = ckpt.model(inputs, n_tokens=N_TOKENS)
    ref_tokens = ref.sequences[:, -N_TOKENS:]
    assert torch.equal(out.tokens, ref_tokens)
    torch.testing.assert_close(out.logits, torch.stack(ref.logits, dim=1).float(), atol=ATOL, rtol=0)
    expected = upstream_actions(ref_tokens.numpy(), ckpt.args.llm.vocab_size, ckpt.args.pad_to_multiple_of)
    np.testing.assert_array_equal(out.actions[:, 0].numpy(), expected)


def test_parity_is_discriminating(pair):
    """Guards the parity tests: the tokens vary, and a bidirectional prefill would change the logits."""
    ckpt, hf = pair
    inputs = query(ckpt, "open the drawer", 0)
    with torch.no_grad():
        out = ckpt.model(inputs, n_tokens=N_TOKENS)
        emb = reference_embeddings(ckpt, hf, inputs)
        causal = ckpt.model.language_model.logits(ckpt.model.prefill(inputs).hidden)
        emb2 = emb.clone()
        emb2[:, -1] += 1.0  # only the last row changes: under a causal mask no earlier row may move
        moved = ckpt.model.language_model.logits(ckpt.model.language_model.run_layers(
            emb2, torch.arange(emb.shape[1])[None], 0, ckpt.args.llm.n_layers))
    assert len(set(out.tokens[0].tolist())) > 1
    torch.testing.assert_close(moved[:, :-1], causal[:, :-1], atol=ATOL, rtol=0)
    assert (moved[:, -1] - causal[:, -1]).abs().max() > 1e-3
