"""Text-driven scores (Eq. 7–9) against a hand computation on the layer's own weights."""

import math

import pytest
import torch

from vla_adp.seam.layout import TokenLayout
from vla_adp.pruning.scoring import entropy, folded_text_vision_scores, participation_ratio, text_vision_scores


@pytest.fixture(scope="module")
def layer_and_inputs(tiny_policy):
    from tests.conftest import make_obs

    inputs, layout = tiny_policy.inputs(make_obs())
    with torch.no_grad():
        emb = tiny_policy.model.embed(inputs)
    return tiny_policy.model.language_model.layers[0], emb.hidden, layout


def hand_scores(layer, hidden, layout):
    """Eq. 7–9 spelled out: per head, per text token, per visual token, no RoPE, no softmax."""
    normed = layer.input_layernorm(hidden)[0]
    attn = layer.self_attn
    h, hd = attn.n_heads, attn.head_dim
    text = [0, *range(layout.prompt.start, layout.prompt.stop), layout.stop]
    q = attn.q_proj(normed[text]).view(len(text), h, hd)
    k = attn.k_proj(normed[layout.visual]).view(layout.n_visual, h, hd)
    phi = torch.zeros(layout.n_visual)
    for head in range(h):
        phi += (q[:, head] @ k[:, head].T).mean(0) / math.sqrt(hd)
    return phi / h


def test_scores_match_hand_computation_both_methods(layer_and_inputs):
    layer, hidden, layout = layer_and_inputs
    attn = layer.self_attn
    with torch.no_grad():
        ref = hand_scores(layer, hidden, layout)
        normed = layer.input_layernorm(hidden)
        exact = text_vision_scores(normed, attn.q_proj, attn.k_proj, attn.n_heads, attn.n_kv_heads, layout, "exact")
        fused = text_vision_scores(normed, attn.q_proj, attn.k_proj, attn.n_heads, attn.n_kv_heads, layout, "fused")
    torch.testing.assert_close(exact[0], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused[0], ref, atol=1e-5, rtol=1e-5)


def test_folded_scores_match_hand_computation_from_normed_and_raw_input(layer_and_inputs):
    layer, hidden, layout = layer_and_inputs
    attn, norm = layer.self_attn, layer.input_layernorm
    with torch.no_grad():
        norm.weight.mul_(torch.linspace(0.5, 1.5, norm.weight.numel()))  # a non-trivial γ to fold in
        try:
            ref = hand_scores(layer, hidden, layout)
            from_normed = text_vision_scores(norm(hidden), attn.q_proj, attn.k_proj, attn.n_heads, attn.n_kv_heads,
                                             layout, "folded")
            from_raw = folded_text_vision_scores(hidden, norm, norm.weight, norm.eps, attn.q_proj, attn.k_proj, attn.n_heads,
                                                 attn.n_kv_heads, layout)
        finally:
            norm.weight.div_(torch.linspace(0.5, 1.5, norm.weight.numel()))
    torch.testing.assert_close(from_normed[0], ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_raw[0], ref, atol=1e-5, rtol=1e-5)


def test_folded_scores_with_grouped_kv_heads_and_k_bias():
    """GQA (2 query heads per K head) and a K bias, against the exact (N_h, T, V) matrix."""
    torch.manual_seed(0)
    d, heads, kv, hd = 32, 4, 2, 8
    layout = TokenLayout(views=(3, 2), n_prompt=4, n_action=3)
    normed = torch.randn(2, layout.length, d)
    q_proj = torch.nn.Linear(d, heads * hd, bias=False)
    k_proj = torch.nn.Linear(d, kv * hd, bias=True)
    with torch.no_grad():
        exact = text_vision_scores(normed, q_proj, k_proj, heads, kv, layout, "exact")
        folded = text_vision_scores(normed, q_proj, k_proj, heads, kv, layout, "folded")
    torch.testing.assert_close(folded, exact, atol=1e-5, rtol=1e-5)


def test_text_tokens_include_bos_prompt_and_stop_not_proprio_or_slots():
    layout = TokenLayout(views=(4, 4), n_prompt=5, n_action=6)
    pos = layout.text_positions().tolist()
    assert pos == [0, 10, 11, 12, 13, 14, 21]
    assert layout.proprio == slice(9, 10) and layout.action == slice(15, 21) and layout.stop == 21


def test_pr_and_entropy_of_constructed_distributions():
    uniform = torch.ones(1, 8)
    peaked = torch.tensor([[0.0, 0, 0, 1.0]])
    # Shift by the minimum: uniform Φ has no mass anywhere after the shift -> treat via offset input.
    base = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]])  # after shift: four equal masses
    assert participation_ratio(base).item() == pytest.approx(4.0)
    assert entropy(base).item() == pytest.approx(math.log(4))
    assert participation_ratio(peaked).item() == pytest.approx(1.0)
    assert entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    assert participation_ratio(uniform).item() == pytest.approx(8.0)  # constant Φ: uniform, not 0/0
    assert entropy(uniform).item() == pytest.approx(math.log(8))
