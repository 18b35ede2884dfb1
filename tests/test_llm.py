"""Our bidirectional Llama decoder against transformers' Llama (independent reference)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from vla_adp.model.config import LlamaArgs
from vla_adp.model.llm import LlamaDecoder

ATOL = 1e-5


def hf_bidirectional(args: LlamaArgs) -> LlamaModel:
    cfg = LlamaConfig(hidden_size=args.dim, intermediate_size=args.ffn_dim, num_hidden_layers=args.n_layers,
                      num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
                      vocab_size=args.vocab_size, rms_norm_eps=args.rms_eps, rope_theta=args.rope_theta,
                      attn_implementation="sdpa")
    model = LlamaModel(cfg).eval()
    # OFT's fork sets is_causal=False; stock transformers 5.x honours the same flag.
    model.config.is_causal = False
    for layer in model.layers:
        layer.self_attn.is_causal = False
    return model


def ours_from_hf(hf: LlamaModel, args: LlamaArgs) -> LlamaDecoder:
    ours = LlamaDecoder(args).eval()
    missing, unexpected = ours.load_state_dict(hf.state_dict(), strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []
    return ours


@pytest.mark.parametrize("n_kv", [4, 2])
def test_decoder_matches_transformers_bidirectional(n_kv):
    torch.manual_seed(0)
    args = LlamaArgs(dim=64, n_layers=3, n_heads=4, n_kv_heads=n_kv, ffn_dim=172, vocab_size=128, rms_eps=1e-6)
    hf = hf_bidirectional(args)
    for p in hf.parameters():  # non-trivial norms
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    ours = ours_from_hf(hf, args)
    x = torch.randn(2, 37, 64)
    with torch.no_grad():
        ref = hf(inputs_embeds=x, attention_mask=torch.ones(2, 37, dtype=torch.long)).last_hidden_state
        got = ours(x)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_reference_really_is_bidirectional():
    """Guards the parity test: a causal model would not see the future token change."""
    torch.manual_seed(0)
    args = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=172, vocab_size=128)
    ours = LlamaDecoder(args).eval()
    x = torch.randn(1, 12, 64)
    x2 = x.clone()
    x2[0, -1] += 1.0
    with torch.no_grad():
        assert (ours(x)[0, 0] - ours(x2)[0, 0]).abs().max() > 1e-4


def test_rope_positions_matter_and_gapped_positions_work():
    torch.manual_seed(0)
    args = LlamaArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=172, vocab_size=128)
    hf = hf_bidirectional(args)
    ours = ours_from_hf(hf, args)
    x = torch.randn(1, 10, 64)
    pos = torch.tensor([[0, 1, 2, 7, 8, 9, 15, 16, 17, 30]])
    with torch.no_grad():
        # An explicit all-ones mask keeps transformers from reading gapped positions as packed sequences.
        ref = hf(inputs_embeds=x, position_ids=pos, attention_mask=torch.ones(1, 10, dtype=torch.long)).last_hidden_state
        got = ours(x, pos)
        plain = ours(x)
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert (got - plain).abs().max() > 1e-4


def test_attention_probs_match_sdpa_output():
    """Attention.probs (one scorer's rows) reproduces what SDPA computes inside the layer."""
    torch.manual_seed(0)
    args = LlamaArgs(dim=64, n_layers=1, n_heads=4, n_kv_heads=4, ffn_dim=172, vocab_size=128)
    dec = LlamaDecoder(args).eval()
    attn = dec.layers[0].self_attn
    x = torch.randn(1, 20, 64)
    pos = torch.arange(20)[None]
    cos, sin = dec.rope(pos, x.dtype)
    rows = torch.tensor([3, 19])
    with torch.no_grad():
        probs = attn.probs(x, cos, sin, rows)  # (1, H, 2, 20)
        v = attn._heads(attn.v_proj(x), 4)
        mixed = (probs @ v).transpose(1, 2).reshape(1, 2, -1)
        ref = attn(x, cos, sin)[:, rows]
    torch.testing.assert_close(attn.o_proj(mixed), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 2))
