"""OpenVLA (autoregressive) against transformers' ``LlamaForCausalLM`` + ``generate``: max abs differences.

    python benchmarks/openvla_parity.py

Tiny random checkpoints in the ``openvla/openvla-7b`` layout (3 decoder layers, MHA and GQA), fp32,
CPU. The reference reads the decoder weights from the shards and gets upstream's multimodal
embeddings (BOS, projected patches, prompt); both sides decode 7 tokens greedily with a KV cache.
Prints the max abs difference of the prefill logits (every row) and of the 7 steps' logits, and
whether the tokens are equal. ``tests/test_openvla_parity.py`` asserts the same within 1e-5.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from vla_adp.model.openvla.checkpoint import load_openvla_checkpoint
from vla_adp.model.openvla.openvla import OpenVLAInputs
from vla_adp.model.openvla.tiny import make_tiny_openvla_checkpoint
from vla_adp.model.tokenizer import PromptTokenizer

QUERIES = [("open the drawer", 0), ("push the red button down", 1), ("close the window", 2)]


def reference(folder: Path) -> LlamaForCausalLM:
    text = json.loads((folder / "config.json").read_text())["text_config"]
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in text.items() if k != "model_type"},
                                         attn_implementation="sdpa")).eval()
    state = {k[len("language_model."):]: v.float() for shard in sorted(folder.glob("model-*.safetensors"))
             for k, v in load_file(str(shard)).items() if k.startswith("language_model.")}
    model.load_state_dict(state, strict=True)
    return model


def compare(ckpt, hf, instruction: str, seed: int) -> tuple[float, float, bool]:
    ids = torch.tensor([PromptTokenizer(ckpt.tokenizer_file).prompt_ids(instruction)])
    inputs = OpenVLAInputs(torch.randn(1, 6, 224, 224, generator=torch.Generator().manual_seed(seed)), ids)
    with torch.no_grad():
        patches = ckpt.model.projector(ckpt.model.vision_backbone(inputs.pixels))
        tok = hf.get_input_embeddings()(ids)
        emb = torch.cat([tok[:, :1], patches, tok[:, 1:]], dim=1)
        prefill = (ckpt.model.language_model.logits(ckpt.model.prefill(inputs).hidden) - hf(inputs_embeds=emb).logits)
        ref = hf.generate(inputs_embeds=emb, max_new_tokens=7, do_sample=False, output_logits=True,
                          return_dict_in_generate=True, pad_token_id=ckpt.args.n_real_vocab, eos_token_id=None)
        out = ckpt.model(inputs)
    steps = out.logits - torch.stack(ref.logits, dim=1)
    return prefill.abs().max().item(), steps.abs().max().item(), torch.equal(out.tokens, ref.sequences[:, -7:])


def main() -> None:
    print(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, fp32, CPU")
    print("| attention | instruction | prefill logits max abs diff | 7-step logits max abs diff | tokens equal |")
    print("|---|---|---|---|---|")
    for kv, name in ((4, "MHA"), (2, "GQA")):
        with tempfile.TemporaryDirectory() as tmp:
            folder = make_tiny_openvla_checkpoint(Path(tmp) / "openvla-7b", seed=3, llm_layers=3, n_kv_heads=kv)
            ckpt, hf = load_openvla_checkpoint(folder, dtype=torch.float32), reference(folder)
            for instruction, seed in QUERIES:
                pre, steps, equal = compare(ckpt, hf, instruction, seed)
                print(f"| {name} | {instruction} | {pre:.1e} | {steps:.1e} | {equal} |")


if __name__ == "__main__":
    main()
