"""π0 / π0.5 on tiny random weights against implementations nobody here wrote.

* SigLIP tower vs transformers' ``SiglipVisionModel``;
* the PaliGemma prefix (bidirectional, padded) vs transformers' ``GemmaModel`` given the same 4-D mask,
  compared on every layer's keys/values (the prefix cache);
* π0's action expert reading that cache vs transformers' ``GemmaModel`` with a ``DynamicCache`` —
  LeRobot's ``PI0Pytorch.denoise_step`` does exactly this with stock transformers;
* π0.5's adaRMS expert layer vs a layer composed from transformers' ``GemmaAttention``/``GemmaMLP``
  with adaRMS written from the published formula (transformers has no adaRMS);
* the Euler sampler vs the published flow-matching equations.

LeRobot's own PI0/PI05 is not the reference: its PyPI release (0.4.4) pins torch<2.11 and
transformers<5 and its π0 needs a patched transformers from git, neither installable beside ours.
Tolerance: fp32, ATOL 1e-5 on activations of order 1 (observed ≤ 2e-6).
"""

import pytest
import torch

from vla_adp.model.pi0 import Pi0Inputs, Pi0Model, tiny_args
from vla_adp.model.pi0.flow import euler_sample, interpolate, step_times, target_velocity, time_embedding
from vla_adp.model.pi0.masks import attention_mask_2d, mask_bias, positions

transformers = pytest.importorskip("transformers")
from transformers import GemmaConfig, GemmaModel, SiglipVisionConfig, SiglipVisionModel  # noqa: E402
from transformers.models.gemma import modeling_gemma  # noqa: E402

ATOL = 1e-5


def random_model(family: str, seed: int = 0) -> Pi0Model:
    torch.manual_seed(seed)
    model = Pi0Model(tiny_args(family)).eval()
    for p in model.parameters():  # non-zero norms and gates, large enough to matter
        torch.nn.init.normal_(p, std=0.3)
    return model


def random_inputs(model: Pi0Model, seed: int = 1) -> Pi0Inputs:
    a, g = model.args, torch.Generator().manual_seed(seed)
    b, n = 2, a.tokenizer_max_length
    return Pi0Inputs(
        images=torch.rand(b, a.n_cameras, 3, a.vision.image_size, a.vision.image_size, generator=g) * 2 - 1,
        image_masks=torch.tensor([[True, True], [True, False]]),  # row 1: second camera missing
        tokens=torch.randint(0, a.vocab_size, (b, n), generator=g),
        token_mask=torch.arange(n)[None] < torch.tensor([[7], [n]]),  # row 0 right-padded
        state=torch.randn(b, a.max_state_dim, generator=g),
    )


def gemma_config(args, vocab: int) -> GemmaConfig:
    return GemmaConfig(hidden_size=args.width, intermediate_size=args.mlp_dim, num_hidden_layers=args.depth,
                       num_attention_heads=args.num_heads, num_key_value_heads=args.num_kv_heads,
                       head_dim=args.head_dim, vocab_size=vocab, rms_norm_eps=args.rms_eps,
                       hidden_activation="gelu_pytorch_tanh", attn_implementation="eager")


def hf_gemma(decoder, vocab: int) -> GemmaModel:
    hf = GemmaModel(gemma_config(decoder.args, vocab)).eval()
    state = {k: v for k, v in decoder.state_dict().items() if k in hf.state_dict()}
    if decoder.embed_tokens is None:
        state["embed_tokens.weight"] = hf.embed_tokens.weight
    hf.load_state_dict(state, strict=True)
    return hf


def test_siglip_matches_transformers():
    model = random_model("pi05")
    v = model.args.vision
    hf = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
        image_size=v.image_size, patch_size=v.patch_size, layer_norm_eps=v.ln_eps, vision_use_head=False,
        attn_implementation="eager")).eval()
    hf.load_state_dict(model.vision.state_dict(), strict=True)
    pixels = torch.rand(2, 3, v.image_size, v.image_size) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model.vision(pixels), hf(pixel_values=pixels).last_hidden_state, atol=ATOL, rtol=0)


def hf_prefix(model: Pi0Model, inputs: Pi0Inputs):
    """The prefix through transformers' Gemma: (cache, embeddings, pad)."""
    hf = hf_gemma(model.vlm, model.args.vocab_size)
    with torch.no_grad():
        embs, pad, ar = model.embed_prefix(inputs)
        text = embs[:, -inputs.tokens.shape[1]:]
        torch.testing.assert_close(text, hf.embed_tokens(inputs.tokens), atol=0, rtol=0)  # √width scaling
        out = hf(inputs_embeds=embs, attention_mask=mask_bias(attention_mask_2d(pad, ar)),
                 position_ids=positions(pad), use_cache=True)
    return out.past_key_values, pad


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_prefix_cache_matches_transformers_gemma(family):
    model = random_model(family)
    inputs = random_inputs(model)
    cache_hf, pad = hf_prefix(model, inputs)
    with torch.no_grad():
        cache = model.encode_prefix(inputs)
    for i, (k, v) in enumerate(cache.kv):
        real = pad[:, None, :, None].expand_as(k)  # padding rows differ only in what nobody reads
        torch.testing.assert_close(k[real], cache_hf.layers[i].keys[real], atol=ATOL, rtol=0, msg=f"layer {i} keys")
        torch.testing.assert_close(v[real], cache_hf.layers[i].values[real], atol=ATOL, rtol=0, msg=f"layer {i} values")


def test_pi0_expert_on_cached_prefix_matches_transformers():
    """LeRobot's denoise_step: the expert GemmaModel with the prefix DynamicCache and a 4-D mask."""
    model = random_model("pi0")
    inputs = random_inputs(model)
    cache_hf, pad = hf_prefix(model, inputs)
    expert = hf_gemma(model.expert, model.args.vocab_size)
    x_t, t = torch.randn(2, model.args.chunk_size, model.args.max_action_dim), torch.tensor([0.7, 0.2])
    with torch.no_grad():
        embs, pad_s, ar_s, _ = model.embed_suffix(inputs.state, x_t, t)
        allowed = torch.cat([pad[:, None].expand(-1, embs.shape[1], -1), attention_mask_2d(pad_s, ar_s)], dim=2)
        hidden = expert(inputs_embeds=embs, attention_mask=mask_bias(allowed), cache=cache_hf,
                        position_ids=positions(pad_s, pad.sum(1)), use_cache=False).last_hidden_state
        ref = model.action_out_proj(hidden[:, -model.args.chunk_size:])
        ours = model.denoise(model.encode_prefix(inputs), inputs.state, x_t, t)
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def reference_adarms(norm, x, cond):
    """Published adaRMS: [scale, shift, gate] = dense(c); x/rms(x)·(1+scale)+shift; gate for the residual."""
    scale, shift, gate = norm.dense(cond)[:, None].chunk(3, dim=-1)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * (1 + scale) + shift, gate


def test_pi05_adarms_expert_layer_matches_transformers_components():
    model = random_model("pi05")
    vlm_layer, layer = model.vlm.layers[0], model.expert.layers[0]
    cfg = gemma_config(model.args.expert, 8)
    attn, mlp = modeling_gemma.GemmaAttention(cfg, layer_idx=0).eval(), modeling_gemma.GemmaMLP(cfg).eval()
    attn.load_state_dict(layer.self_attn.state_dict())
    mlp.load_state_dict(layer.mlp.state_dict())
    rope = modeling_gemma.GemmaRotaryEmbedding(cfg)
    b, sp, ss = 2, 5, model.args.chunk_size
    xp, xs = torch.randn(b, sp, model.args.vlm.width), torch.randn(b, ss, model.args.expert.width)
    cond = torch.randn(b, model.args.expert.width)
    from vla_adp.model.pi0.gemma import mixed_layer

    pad = torch.ones(b, sp + ss, dtype=torch.bool)
    ar = torch.tensor([0] * sp + [1] + [0] * (ss - 1))[None].expand(b, -1)
    allowed, pos = attention_mask_2d(pad, ar), positions(pad)
    with torch.no_grad():
        _, (k, v) = mixed_layer([vlm_layer], [xp], [None], mask_bias(allowed[:, :sp, :sp]), pos[:, :sp], 1e4)
        (_, ours), _ = mixed_layer([vlm_layer, layer], [None, xs], [None, cond], mask_bias(allowed[:, sp:]),
                                   pos[:, sp:], 1e4, past=(k, v))
        # reference: transformers' attention over [cached prefix keys, suffix] (keys after RoPE)
        n, gate = reference_adarms(layer.input_layernorm, xs, cond)
        cos, sin = rope(n, pos[:, sp:])
        q = attn.q_proj(n).view(b, ss, -1, cfg.head_dim).transpose(1, 2)
        ks = attn.k_proj(n).view(b, ss, -1, cfg.head_dim).transpose(1, 2)
        vs = attn.v_proj(n).view(b, ss, -1, cfg.head_dim).transpose(1, 2)
        q, ks = modeling_gemma.apply_rotary_pos_emb(q, ks, cos, sin)
        out, _ = modeling_gemma.eager_attention_forward(attn, q, torch.cat([k, ks], 2), torch.cat([v, vs], 2),
                                                        mask_bias(allowed[:, sp:]), scaling=attn.scaling)
        h = xs + attn.o_proj(out.reshape(b, ss, -1)) * gate
        n, gate = reference_adarms(layer.post_attention_layernorm, h, cond)
        ref = h + mlp(n) * gate
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_cached_denoise_equals_joint_pass(family):
    """The prefix KV cache reused by the suffix gives the training-style joint pass's velocity."""
    model = random_model(family)
    inputs = random_inputs(model)
    x_t, t = torch.randn(2, model.args.chunk_size, model.args.max_action_dim), torch.tensor([1.0, 0.35])
    with torch.no_grad():
        torch.testing.assert_close(model.denoise(model.encode_prefix(inputs), inputs.state, x_t, t),
                                   model.velocity(inputs, x_t, t), atol=ATOL, rtol=0)


def test_prefix_ignores_the_suffix_and_padding():
    """The prefix block never sees the suffix; padded prompt tokens change nothing real."""
    model = random_model("pi05")
    inputs = random_inputs(model)
    changed = Pi0Inputs(inputs.images, inputs.image_masks, inputs.tokens.clone(), inputs.token_mask, inputs.state)
    changed.tokens[0, 7:] = (changed.tokens[0, 7:] + 1) % model.args.vocab_size  # row 0's padding
    changed.images[1, 1] = -changed.images[1, 1]  # row 1's missing camera
    with torch.no_grad():
        a, b = model.encode_prefix(inputs), model.encode_prefix(changed)
        x_t, t = torch.randn(2, model.args.chunk_size, model.args.max_action_dim), torch.tensor([0.5, 0.5])
        torch.testing.assert_close(model.denoise(a, None, x_t, t), model.denoise(b, None, x_t, t), atol=ATOL, rtol=0)


def test_mask_structure_is_the_published_one():
    pad = torch.tensor([[1, 1, 1, 0, 1, 1, 1]], dtype=torch.bool)  # prefix of 4 (one pad), π0 state, 2 actions
    ar = torch.tensor([[0, 0, 0, 0, 1, 1, 0]])
    m = attention_mask_2d(pad, ar)[0].int()
    expected = torch.tensor([
        [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 1, 1, 1]])
    assert torch.equal(m, expected)
    assert positions(pad).tolist() == [[0, 1, 2, 2, 3, 4, 5]]


def test_euler_sampler_follows_the_published_equations():
    """On the straight path x_t = tε + (1−t)A the true velocity is u = ε − A = (x_t − A)/t; ten Euler
    steps from t = 1 at δ = −0.1 land on A, and v is queried at t = 1, 0.9, …, 0.1."""
    g = torch.Generator().manual_seed(0)
    target, noise = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    seen = []

    def velocity(x, t):
        seen.append(float(t[0]))
        torch.testing.assert_close(x, interpolate(target, noise, t), atol=1e-5, rtol=0)
        return target_velocity(target, noise)

    out = euler_sample(velocity, noise, 10)
    torch.testing.assert_close(out, target, atol=1e-5, rtol=0)
    assert seen == pytest.approx([1.0 - k / 10 for k in range(10)], abs=1e-7)
    assert step_times(10) == [1.0 + k * (-1 / 10) for k in range(10)]


def test_model_sampler_is_ten_euler_steps_of_the_joint_velocity():
    model = random_model("pi05")
    inputs = random_inputs(model)
    noise = torch.randn(2, model.args.chunk_size, model.args.max_action_dim)
    with torch.no_grad():
        x = noise
        for k in range(10):
            x = x + (-0.1) * model.velocity(inputs, x, torch.full((2,), 1.0 - 0.1 * k))
        torch.testing.assert_close(model.sample_actions(inputs, noise=noise), x, atol=ATOL, rtol=0)


def test_time_embedding_periods():
    """sin/cos halves with periods 4e-3 … 4: at t = 1 the longest period gives sin(2π/4) = 1."""
    emb = time_embedding(torch.tensor([0.0, 1.0]), 8, 4e-3, 4.0)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb[1, 3].item() == pytest.approx(1.0, abs=1e-6) and emb[1, 7].item() == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_are_named():
    model = random_model("pi05")
    inputs = random_inputs(model)
    inputs.images = inputs.images[:, :1]
    with pytest.raises(ValueError, match=r"images must be \(B, 2, 3, 28, 28\)"):
        model.encode_prefix(inputs)
    with pytest.raises(ValueError, match="expert shares attention"):
        tiny_args("pi05", expert=tiny_args().expert.__class__(width=16, depth=3, mlp_dim=24, num_heads=2,
                                                              num_kv_heads=1, head_dim=8))


@pytest.mark.parametrize("family", ["pi0", "pi05"])
def test_bfloat16_runs(family):
    """Pure bf16, and LeRobot's mix (Gemmas bf16; vision, projector, norms, action/time heads float32)."""
    model = random_model(family)
    inputs = random_inputs(model)
    noise = torch.randn(2, model.args.chunk_size, model.args.max_action_dim)
    with torch.no_grad():
        ref = model.sample_actions(inputs, noise=noise)
        model.to(torch.bfloat16)
        pure = model.sample_actions(inputs, noise=noise)
        for name, module in model.named_modules():
            top = name.split(".")[0]
            if top in ("vision", "projector") or name.endswith("norm") or "proj" in top or "mlp" in top:
                module.float()
        mixed = model.sample_actions(inputs, noise=noise)
    for out in (pure, mixed):  # random weights of std 0.3: ~3 % seen
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert (out - ref).abs().max() < 0.1 * ref.abs().max()
