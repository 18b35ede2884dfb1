"""π0 / π0.5: a PaliGemma prefix, a Gemma action expert, flow-matching sampling.

π0 paper (Black et al. 2024) §3 and Fig. 3; π0.5 paper (2025) §IV; behaviour as in openpi
``src/openpi/models_pytorch/pi0_pytorch.py`` and LeRobot ``policies/pi0/modeling_pi0.py``,
``policies/pi05/modeling_pi05.py``.

    cameras (B,C,3,224,224) ─► SigLIP ─► projector ─┐              (image tokens, not scaled)
    prompt tokens (B,L) ─► embed · √width ──────────┴► prefix (B, C·256 + L, 2048)
                                                         │  VLM Gemma 2B, bidirectional
                                                         ▼  (run once per query)
                                             per-layer keys/values (the prefix cache)
                                                         │
    x_t (B,H,32), t ─► suffix tokens ─► expert Gemma 300M, each layer attends to [cache, suffix]
                                                         ▼
                                             v_t = action_out_proj(...) ─► Euler step (×10)

Suffix: π0 = [state_proj(s)] + action_time_mlp([action_in_proj(x_t), emb(t)]), the state token in a
block of its own; π0.5 = action_in_proj(x_t) with the time as adaRMS conditioning
(``time_mlp``) and the state discretised into the prompt (:mod:`vla_adp.model.pi0.prompt`).

Pruning hook: :meth:`Pi0Model.encode_prefix` takes a :class:`PrefixSelector` that sees layer
``selector.layer``'s input and returns the prefix tokens to keep; the layers from there on (and the
suffix at those layers) run on the kept tokens only. Earlier layers keep their full cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_adp.model.pi0.config import Pi0Args
from vla_adp.model.pi0.flow import euler_sample, time_embedding
from vla_adp.model.llm import apply_rope, rope_cos_sin
from vla_adp.model.pi0.gemma import KV, GemmaDecoder, GemmaLayer, mixed_layer
from vla_adp.model.pi0.masks import attention_mask_2d, mask_bias, positions
from vla_adp.model.pi0.siglip import SiglipVisionTower


@dataclass
class Pi0Inputs:
    """One batch of model inputs (already normalised and tokenised).

    Args:
        images: (B, C, 3, H, W) in [-1, 1], one slot per camera of ``Pi0Args.n_cameras``.
        image_masks: (B, C) bool, False for a missing camera (its tokens are masked, not dropped).
        tokens: (B, L) prompt ids, right-padded.
        token_mask: (B, L) bool, False on padding.
        state: (B, max_state_dim) normalised, padded state (π0's state token; unused by π0.5).
    """

    images: Tensor
    image_masks: Tensor
    tokens: Tensor
    token_mask: Tensor
    state: Tensor | None = None


@dataclass(frozen=True)
class PrefixLayout:
    """Where the prefix's tokens sit: one span per camera, then the prompt."""

    camera_spans: tuple[tuple[int, int], ...]
    text_span: tuple[int, int]

    @property
    def image_positions(self) -> Tensor:
        return torch.cat([torch.arange(a, b) for a, b in self.camera_spans])

    @property
    def length(self) -> int:
        return self.text_span[1]


@dataclass
class PrefixContext:
    """What a selector sees before one VLM layer runs over the prefix."""

    layer_index: int
    hidden: Tensor  # (B, S, D) the layer's input
    pad: Tensor  # (B, S) real tokens
    position_ids: Tensor  # (B, S)
    layer: GemmaLayer  # its input_layernorm / q_proj / k_proj, for scorers
    layout: PrefixLayout
    ar: Tensor | None = None  # (B, S) block starts (None: one bidirectional block)
    rope_theta: float = 10_000.0

    def attention_received(self, rows: Tensor) -> Tensor:
        """Softmax attention this layer gives each key, averaged over heads and the query ``rows``
        (B, S) bool: (B, S) float32. Recomputed here (eager, float32 softmax) for the scorer only."""
        n, _ = self.layer.input_layernorm(self.hidden, None)
        q, k, _ = self.layer.self_attn.qkv(n)
        cos, sin = rope_cos_sin(self.position_ids, q.shape[-1], self.rope_theta, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin).repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        ar = torch.zeros_like(self.pad) if self.ar is None else self.ar
        logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 + mask_bias(attention_mask_2d(self.pad, ar), q.dtype)
        probs = logits.softmax(dim=-1, dtype=torch.float32).mean(dim=1)  # (B, S, S)
        w = rows.float()
        return (probs * w[..., None]).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp(min=1)


class PrefixSelector(Protocol):
    """Chooses the prefix tokens kept from layer ``layer`` on.

    A selector may also define ``observe(ctx)``: it is then called before every earlier layer
    (FastV scores the attention of layer ``layer − 1`` and cuts before ``layer``).
    """

    layer: int
    renumber: bool  # True: kept tokens get contiguous RoPE positions; False: keep their own

    def __call__(self, ctx: PrefixContext) -> Tensor:
        """(B, K) ascending indices into the current prefix."""
        ...


@dataclass
class PrefixCache:
    """The prefix's keys/values per VLM layer, with the mask of real tokens at that layer."""

    kv: list[KV]
    pads: list[Tensor]  # (B, S_i) per layer (S_i shrinks after a cut)
    next_position: Tensor  # (B,) RoPE position of the first suffix token

    @property
    def lengths(self) -> list[int]:
        return [p.shape[1] for p in self.pads]


class Pi0Model(nn.Module):
    def __init__(self, args: Pi0Args):
        super().__init__()
        self.args = args
        e = args.expert.width
        self.vision = SiglipVisionTower(args.vision)
        self.projector = nn.Linear(args.vision.width, args.vlm.width)
        self.vlm = GemmaDecoder(args.vlm, vocab_size=args.vocab_size)
        self.expert = GemmaDecoder(args.expert, adarms=args.pi05)
        self.action_in_proj = nn.Linear(args.max_action_dim, e)
        self.action_out_proj = nn.Linear(e, args.max_action_dim)
        if args.pi05:
            self.time_mlp_in, self.time_mlp_out = nn.Linear(e, e), nn.Linear(e, e)
        else:
            self.state_proj = nn.Linear(args.max_state_dim, e)
            self.action_time_mlp_in, self.action_time_mlp_out = nn.Linear(2 * e, e), nn.Linear(e, e)

    # -- prefix ---------------------------------------------------------------------------------
    def layout(self, n_tokens: int) -> PrefixLayout:
        n = self.args.vision.num_patches
        spans = tuple((c * n, (c + 1) * n) for c in range(self.args.n_cameras))
        return PrefixLayout(spans, (spans[-1][1], spans[-1][1] + n_tokens))

    def embed_prefix(self, inputs: Pi0Inputs) -> tuple[Tensor, Tensor, Tensor]:
        """-> embeddings (B, S, D), pad (B, S), ar (B, S): one bidirectional block."""
        self._check(inputs)
        embs, pads = [], []
        n, dtype = self.args.vision.num_patches, self.vlm.embed_tokens.weight.dtype
        for c in range(self.args.n_cameras):
            if inputs.image_masks[:, c].any():
                tokens = _linear(self.projector, self.vision(inputs.images[:, c])).to(dtype)  # (B, N, D)
            else:  # a slot masked in every row (LIBERO's third camera): no real token reads it
                tokens = torch.zeros(inputs.images.shape[0], n, self.args.vlm.width, dtype=dtype,
                                     device=inputs.images.device)
            embs.append(tokens)
            pads.append(inputs.image_masks[:, c, None].expand(-1, tokens.shape[1]))
        embs.append(self.vlm.embed(inputs.tokens))
        pads.append(inputs.token_mask.bool())
        embs, pad = torch.cat(embs, dim=1), torch.cat(pads, dim=1)
        return embs, pad, torch.zeros_like(pad)

    def encode_prefix(self, inputs: Pi0Inputs, selector: PrefixSelector | None = None) -> PrefixCache:
        embs, pad, ar = self.embed_prefix(inputs)
        return self.encode_prefix_embeddings(embs, pad, ar, self.layout(inputs.tokens.shape[1]), selector)

    def encode_prefix_embeddings(self, h: Tensor, pad: Tensor, ar: Tensor, layout: PrefixLayout,
                                 selector: PrefixSelector | None = None) -> PrefixCache:
        """Run the VLM over the prefix once; return every layer's keys/values."""
        pos, next_position = positions(pad), pad.sum(dim=1)
        kvs, pads = [], []
        theta = self.args.vlm.rope_theta
        for i, layer in enumerate(self.vlm.layers):
            if selector is not None and i < selector.layer and hasattr(selector, "observe"):
                selector.observe(PrefixContext(i, h, pad, pos, layer, layout, ar, theta))
            if selector is not None and i == selector.layer:
                keep = selector(PrefixContext(i, h, pad, pos, layer, layout, ar, theta))
                h, pad, ar, pos = _gather(keep, h, pad, ar, pos)
                if selector.renumber:
                    pos, next_position = positions(pad), pad.sum(dim=1)
            bias = mask_bias(attention_mask_2d(pad, ar), h.dtype)
            (h,), kv = mixed_layer([layer], [h], [None], bias, pos, self.args.vlm.rope_theta)
            kvs.append(kv)
            pads.append(pad)
        return PrefixCache(kvs, pads, next_position)

    # -- suffix ---------------------------------------------------------------------------------
    def embed_suffix(self, state: Tensor | None, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """-> embeddings (B, S_s, D_e), pad, ar, adaRMS conditioning (π0.5) or None (π0)."""
        a = self.args
        temb = time_embedding(t, a.expert.width, a.min_period, a.max_period)
        actions = _linear(self.action_in_proj, x_t)  # (B, H, De)
        ar = [1] + [0] * (a.chunk_size - 1)
        if a.pi05:
            cond = F.silu(_linear(self.time_mlp_out, F.silu(_linear(self.time_mlp_in, temb))))
            embs = actions
        else:
            if state is None:
                raise ValueError("π0 needs the (normalised, padded) state for its state token, got None")
            cond = None
            fused = torch.cat([actions, temb[:, None].to(actions.dtype).expand_as(actions)], dim=2)
            fused = _linear(self.action_time_mlp_out, F.silu(_linear(self.action_time_mlp_in, fused)))
            embs = torch.cat([_linear(self.state_proj, state)[:, None].to(fused.dtype), fused], dim=1)
            ar = [1] + ar
        expert_dtype = self.expert.layers[0].self_attn.q_proj.weight.dtype
        embs = embs.to(expert_dtype)
        cond = None if cond is None else cond.to(expert_dtype)
        b = x_t.shape[0]
        pad = torch.ones(b, embs.shape[1], dtype=torch.bool, device=x_t.device)
        return embs, pad, torch.tensor(ar, device=x_t.device)[None].expand(b, -1), cond

    def denoise(self, cache: PrefixCache, state: Tensor | None, x_t: Tensor, t: Tensor) -> Tensor:
        """v_θ(x_t, t): the expert over the suffix, attending to the cached prefix at every layer."""
        h, pad, ar, cond = self.embed_suffix(state, x_t, t)
        pos = positions(pad, cache.next_position)
        own = attention_mask_2d(pad, ar)
        for i, layer in enumerate(self.expert.layers):
            prefix = cache.pads[i][:, None, :].expand(-1, h.shape[1], -1)
            bias = mask_bias(torch.cat([prefix, own], dim=2), h.dtype)
            (_, h), _ = mixed_layer([self.vlm.layers[i], layer], [None, h], [None, cond], bias, pos,
                                    self.args.vlm.rope_theta, past=cache.kv[i])
        return self._velocity(h, cond)

    def sample_actions(self, inputs: Pi0Inputs, noise: Tensor | None = None, num_steps: int | None = None,
                       selector: PrefixSelector | None = None) -> Tensor:
        """Euler-integrate the flow from noise (B, H, A) to an action chunk; the prefix runs once."""
        a = self.args
        if noise is None:
            noise = torch.randn(inputs.tokens.shape[0], a.chunk_size, a.max_action_dim, device=inputs.tokens.device)
        cache = self.encode_prefix(inputs, selector)
        return euler_sample(lambda x, t: self.denoise(cache, inputs.state, x, t), noise, num_steps or a.num_steps)

    # -- the joint pass (training; also the reference the cached path is tested against) --------
    def velocity(self, inputs: Pi0Inputs, x_t: Tensor, t: Tensor) -> Tensor:
        """v_θ(x_t, t) from one pass over [prefix, suffix] with the full 2-D mask, no cache."""
        hp, pad_p, ar_p = self.embed_prefix(inputs)
        hs, pad_s, ar_s, cond = self.embed_suffix(inputs.state, x_t, t)
        pad, ar = torch.cat([pad_p, pad_s], dim=1), torch.cat([ar_p, ar_s.to(ar_p.dtype)], dim=1)
        bias, pos = mask_bias(attention_mask_2d(pad, ar), hp.dtype), positions(pad)
        for vlm_layer, exp_layer in zip(self.vlm.layers, self.expert.layers, strict=True):
            (hp, hs), _ = mixed_layer([vlm_layer, exp_layer], [hp, hs], [None, cond], bias, pos,
                                      self.args.vlm.rope_theta)
        return self._velocity(hs, cond)

    def _velocity(self, h: Tensor, cond: Tensor | None) -> Tensor:
        h, _ = self.expert.norm(h, cond)
        return _linear(self.action_out_proj, h[:, -self.args.chunk_size:]).float()

    def _check(self, inputs: Pi0Inputs) -> None:
        a, im = self.args, inputs.images
        want = (a.n_cameras, 3, a.vision.image_size, a.vision.image_size)
        if im.ndim != 5 or tuple(im.shape[1:]) != want:
            raise ValueError(f"images must be (B, {', '.join(map(str, want))}), got {tuple(im.shape)}")
        if tuple(inputs.image_masks.shape) != (im.shape[0], a.n_cameras):
            raise ValueError(f"image_masks must be (B, {a.n_cameras}), got {tuple(inputs.image_masks.shape)}")
        if inputs.tokens.shape != inputs.token_mask.shape:
            raise ValueError(f"tokens {tuple(inputs.tokens.shape)} and token_mask "
                             f"{tuple(inputs.token_mask.shape)} must have the same shape")


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` in the layer's dtype: LeRobot keeps the vision path and the action/time
    projections in float32 when the Gemmas run in bfloat16."""
    return layer(x.to(layer.weight.dtype))


def _gather(keep: Tensor, *seqs: Tensor) -> tuple[Tensor, ...]:
    """Select ``keep`` (B, K) along dim 1 of each (B, S, …) tensor."""
    out = []
    for s in seqs:
        idx = keep.to(s.device)
        if s.ndim == 3:
            idx = idx[..., None].expand(-1, -1, s.shape[-1])
        out.append(torch.gather(s, 1, idx))
    return tuple(out)
