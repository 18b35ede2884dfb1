"""π0 / π0.5: a PaliGemma prefix, a Gemma action expert, flow-matching sampling.

π0 paper (Black et al. 2024) §3 and Fig. 3; π0.5 paper (2025) §IV; behaviour as in openpi
``src/openpi/models_pytorch/pi0_pytorch.py`` and LeRobot ``policies/pi0/modeling_pi0.py``,
``policies/pi05/modeling_pi05.py``.

    cameras (B,C,3,224,224) ─► SigLIP ─► projector ─┐              (image tokens, not scaled)
    prompt tokens (B,L) ─► embed · √width ──────────┴► prefix (B, C·256 + L, 2048)
                                                         │  VLM Gemma 2B, bidirectional
                                                         │  pruner.at_layer(ℓ) may cut image tokens
                                                         ▼  (run once per query)
                                             per-layer keys/values (the prefix cache)
                                                         │
    x_t (B,H,32), t ─► suffix tokens ─► expert Gemma 300M, each layer attends to [cache, suffix]
                                                         ▼  (an ExpertObserver may read its attention)
                                             v_t = action_out_proj(...) ─► Euler step (×10)

Suffix: π0 = [state_proj(s)] + action_time_mlp([action_in_proj(x_t), emb(t)]), the state token in a
block of its own; π0.5 = action_in_proj(x_t) with the time as adaRMS conditioning
(``time_mlp``) and the state discretised into the prompt (:mod:`vla_adp.model.pi0.processor`).

On the seam (:mod:`vla_adp.seam`) the prefix is what :meth:`Pi0Model.layout` describes: the image
tokens of the cameras present in the batch, then the prompt up to its last real token (no BOS slot —
PaliGemma's BOS opens the prompt —, no proprio, action or stop slots: the suffix is outside it).
Camera slots masked in every row and the prompt's common right padding are left out of that
sequence: no real token reads them and they do not advance RoPE positions, so the outputs are those
of LeRobot's full sequence up to float rounding (tested; :meth:`Pi0Model.full_prefix` keeps them,
for parity). Padding that remains (rows of a batch) is the :class:`LayerContext` key mask. A pruner's
:class:`~vla_adp.seam.keep.KeepSet` at VLM layer ℓ shortens the prefix there: layers < ℓ cache every
key, layers ≥ ℓ (and the expert at those layers) only the kept ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla_adp.model.pi0.config import Pi0Args
from vla_adp.model.pi0.flow import euler_sample, time_embedding
from vla_adp.model.pi0.gemma import KV, GemmaDecoder, mixed_layer
from vla_adp.model.pi0.masks import attention_mask_2d, mask_bias, positions
from vla_adp.model.pi0.siglip import SiglipVisionTower
from vla_adp.seam.context import LayerContext, Pruner
from vla_adp.seam.keep import KeepSet, apply_keep_set, sequence_index
from vla_adp.seam.layout import TokenLayout
from vla_adp.utils.timing import NullStopwatch


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


@dataclass
class Prefix:
    """The embedded prefix: (B, S, D) tokens, (B, S) real-token mask, and the layout of the S tokens."""

    hidden: Tensor
    pad: Tensor
    layout: TokenLayout


@dataclass
class PrefixCache:
    """The prefix's keys/values per VLM layer, with the real-token mask and layout at that layer."""

    kv: list[KV]
    pads: list[Tensor]  # (B, S_i) per layer (S_i shrinks after a cut)
    layouts: list[TokenLayout]
    next_position: Tensor  # (B,) RoPE position of the first suffix token
    keep_sets: list[KeepSet] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [p.shape[1] for p in self.pads]


@dataclass
class ExpertContext:
    """The action expert's attention over the cached prefix at one layer of one denoising step.

    Args:
        step: Euler step k (0 … N−1); ``time`` (B,) its t.
        index: expert (= VLM) layer.
        probs: (B, H, chunk, P) float32 softmax weights of the action rows over the P prefix keys this
            layer cached (the weights the layer used; their rest goes to the suffix's own keys).
        layout: the prefix layout at this layer (pruned if the cut came at or before it).
        key_mask: (B, P) real prefix keys.
    """

    step: int
    time: Tensor
    index: int
    probs: Tensor
    layout: TokenLayout
    key_mask: Tensor


@runtime_checkable
class ExpertObserver(Protocol):
    """A pruner that also reads the denoising steps (VLA-Pruner's action-to-vision attention on π0).

    ``expert_layers()`` names the expert layers to report; the model calls ``at_expert(ctx)`` for each
    of them at every denoising step. Read-only: observing changes no output.
    """

    def expert_layers(self) -> frozenset[int]: ...

    def at_expert(self, ctx: ExpertContext) -> None: ...


@dataclass
class Pi0Output:
    """One sampled chunk and how the prefix was pruned.

    Args:
        actions: (B, chunk, max_action_dim) normalised, float32.
        layout: the final prefix layout; ``keep_sets`` the cuts made, in layer order.
        prefix_lens: prefix tokens at each VLM layer (the expert attends to as many keys there).
        cameras: camera slots present in the prefix (the layout's views, in order).
    """

    actions: Tensor
    layout: TokenLayout
    keep_sets: list[KeepSet]
    prefix_lens: list[int]
    cameras: tuple[int, ...]


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
    @staticmethod
    def present_cameras(inputs: Pi0Inputs) -> tuple[int, ...]:
        """Camera slots real in at least one batch row."""
        return tuple(int(c) for c in inputs.image_masks.any(dim=0).nonzero().flatten())

    @staticmethod
    def prompt_length(inputs: Pi0Inputs) -> int:
        """Prompt slots up to the last real token of any row (the common right padding left out)."""
        real = inputs.token_mask.any(dim=0).nonzero()
        if not len(real):
            raise ValueError("the prompt has no real token (token_mask is False everywhere)")
        return int(real.max()) + 1

    def layout(self, inputs: Pi0Inputs) -> TokenLayout:
        """The seam's layout of the prefix: present cameras' image tokens, then the prompt."""
        self._check(inputs)
        cameras = self.present_cameras(inputs)
        if not cameras:
            raise ValueError("no camera is present (image_masks is False everywhere); π0 needs at least one image")
        return TokenLayout(views=(self.args.vision.num_patches,) * len(cameras), n_prompt=self.prompt_length(inputs),
                           n_action=0, n_proprio=0, n_bos=0, n_stop=0)

    def prefix(self, inputs: Pi0Inputs) -> Prefix:
        """The prefix :meth:`layout` describes (masked-everywhere camera slots and common padding left out)."""
        layout = self.layout(inputs)
        n = layout.n_prompt
        cameras = self.present_cameras(inputs)
        embs = [self._image_tokens(inputs, c) for c in cameras] + [self.vlm.embed(inputs.tokens[:, :n])]
        pads = [inputs.image_masks[:, c, None].expand(-1, layout.views[0]) for c in cameras]
        pads.append(inputs.token_mask[:, :n].bool())
        return Prefix(torch.cat(embs, dim=1), torch.cat(pads, dim=1), layout)

    def full_prefix(self, inputs: Pi0Inputs) -> Prefix:
        """LeRobot's prefix: every camera slot (masked ones included) and the padded prompt."""
        embs, pad, _ = self.embed_prefix(inputs)
        a = self.args
        layout = TokenLayout(views=(a.vision.num_patches,) * a.n_cameras, n_prompt=inputs.tokens.shape[1],
                             n_action=0, n_proprio=0, n_bos=0, n_stop=0)
        return Prefix(embs, pad, layout)

    def embed_prefix(self, inputs: Pi0Inputs) -> tuple[Tensor, Tensor, Tensor]:
        """LeRobot's full prefix -> embeddings (B, S, D), pad (B, S), ar (B, S): one bidirectional block."""
        self._check(inputs)
        embs, pads = [], []
        n, dtype = self.args.vision.num_patches, self.vlm.embed_tokens.weight.dtype
        for c in range(self.args.n_cameras):
            if inputs.image_masks[:, c].any():
                tokens = self._image_tokens(inputs, c)  # (B, N, D)
            else:  # a slot masked in every row (LIBERO's third camera): no real token reads it
                tokens = torch.zeros(inputs.images.shape[0], n, self.args.vlm.width, dtype=dtype,
                                     device=inputs.images.device)
            embs.append(tokens)
            pads.append(inputs.image_masks[:, c, None].expand(-1, tokens.shape[1]))
        embs.append(self.vlm.embed(inputs.tokens))
        pads.append(inputs.token_mask.bool())
        embs, pad = torch.cat(embs, dim=1), torch.cat(pads, dim=1)
        return embs, pad, torch.zeros_like(pad)

    def _image_tokens(self, inputs: Pi0Inputs, c: int) -> Tensor:
        return _linear(self.projector, self.vision(inputs.images[:, c])).to(self.vlm.embed_tokens.weight.dtype)

    def encode_prefix(self, inputs: Pi0Inputs) -> PrefixCache:
        """LeRobot's prefix cache (:meth:`full_prefix`, unpruned)."""
        return self.encode(self.full_prefix(inputs))

    def encode(self, prefix: Prefix, pruner: Pruner | None = None, hooks: frozenset[int] = frozenset(),
               timer=NullStopwatch()) -> PrefixCache:
        """Run the VLM over the prefix once and return every layer's keys/values; before each layer in
        ``hooks`` the pruner sees a :class:`LayerContext` and may return a :class:`KeepSet`."""
        depth = self.args.vlm.depth
        bad = sorted(h for h in hooks if not 0 <= h < depth)
        if bad:
            raise ValueError(f"pruner {getattr(pruner, 'name', pruner)!r} asked for layer(s) {bad}; "
                             f"this VLM has layers 0..{depth - 1}")
        if hooks and pruner is None:
            raise ValueError(f"hook layers {sorted(hooks)} given without a pruner")
        h, pad, layout = prefix.hidden, prefix.pad, prefix.layout
        pos, next_position = positions(pad), pad.sum(dim=1)
        visual = h[:, layout.visual]
        kvs, pads, layouts, keep_sets = [], [], [], []
        for i, layer in enumerate(self.vlm.layers):
            if i in hooks:
                with timer("prune"):
                    ctx = LayerContext(i, h, pos, layout, visual, self.vlm, key_mask=None if bool(pad.all()) else pad)
                    keep_set = pruner.at_layer(ctx)
                if keep_set is not None:
                    with timer("gather"):
                        h, pos, pad, layout, next_position = _cut(h, pos, pad, layout, keep_set, next_position)
                    keep_sets.append(keep_set)
            with timer("prefix"):
                bias = mask_bias(attention_mask_2d(pad, torch.zeros_like(pad)), h.dtype)
                (h,), kv = mixed_layer([layer], [h], [None], bias, pos, self.args.vlm.rope_theta)
            kvs.append(kv)
            pads.append(pad)
            layouts.append(layout)
        return PrefixCache(kvs, pads, layouts, next_position, keep_sets)

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

    def denoise(self, cache: PrefixCache, state: Tensor | None, x_t: Tensor, t: Tensor,
                observer: ExpertObserver | None = None, step: int = 0) -> Tensor:
        """v_θ(x_t, t): the expert over the suffix, attending to the cached prefix at every layer."""
        h, pad, ar, cond = self.embed_suffix(state, x_t, t)
        pos = positions(pad, cache.next_position)
        own = attention_mask_2d(pad, ar)
        watch = observer.expert_layers() if observer is not None else frozenset()
        for i, layer in enumerate(self.expert.layers):
            prefix = cache.pads[i][:, None, :].expand(-1, h.shape[1], -1)
            bias = mask_bias(torch.cat([prefix, own], dim=2), h.dtype)
            probs = [] if i in watch else None
            (_, h), _ = mixed_layer([self.vlm.layers[i], layer], [None, h], [None, cond], bias, pos,
                                    self.args.vlm.rope_theta, past=cache.kv[i], probs_out=probs)
            if probs:
                p = cache.pads[i].shape[1]  # action rows are the last chunk_size rows (π0: after the state)
                seen = probs[0][:, :, -self.args.chunk_size:, :p]
                observer.at_expert(ExpertContext(step, t, i, seen, cache.layouts[i], cache.pads[i]))
        return self._velocity(h, cond)

    def sample(self, cache: PrefixCache, state: Tensor | None, noise: Tensor, num_steps: int | None = None,
               observer: ExpertObserver | None = None) -> Tensor:
        """Euler-integrate the flow from noise (B, H, A) to an action chunk over a computed prefix cache."""
        steps = iter(range(num_steps or self.args.num_steps))
        return euler_sample(lambda x, t: self.denoise(cache, state, x, t, observer, next(steps)), noise,
                            num_steps or self.args.num_steps)

    def sample_actions(self, inputs: Pi0Inputs, noise: Tensor | None = None, num_steps: int | None = None) -> Tensor:
        """LeRobot's ``sample_actions``: the full prefix once (unpruned), then the Euler steps."""
        return self.sample(self.encode_prefix(inputs), inputs.state, self._noise(inputs, noise), num_steps)

    # -- one query on the seam ---------------------------------------------------------------------
    def forward(self, inputs: Pi0Inputs, pruner: Pruner | None = None, hooks: frozenset[int] = frozenset(),
                timer=NullStopwatch(), noise: Tensor | None = None, num_steps: int | None = None) -> Pi0Output:
        """Sample one normalised chunk per batch row, the pruner cutting the prefix before ``hooks``
        (from ``pruner.begin``); a pruner that is also an :class:`ExpertObserver` reads the expert."""
        with timer("vision"):
            prefix = self.prefix(inputs)
        cache = self.encode(prefix, pruner, hooks, timer)
        observer = pruner if isinstance(pruner, ExpertObserver) else None
        with timer("denoise"):
            actions = self.sample(cache, inputs.state, self._noise(inputs, noise), num_steps, observer)
        return Pi0Output(actions, cache.layouts[-1], cache.keep_sets, cache.lengths, self.present_cameras(inputs))

    def _noise(self, inputs: Pi0Inputs, noise: Tensor | None) -> Tensor:
        a = self.args
        if noise is None:
            return torch.randn(inputs.tokens.shape[0], a.chunk_size, a.max_action_dim, device=inputs.tokens.device)
        want = (inputs.tokens.shape[0], a.chunk_size, a.max_action_dim)
        if tuple(noise.shape) != want:
            raise ValueError(f"noise must have shape {want}, got {tuple(noise.shape)}")
        return noise

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


def _cut(h: Tensor, pos: Tensor, pad: Tensor, layout: TokenLayout, keep_set: KeepSet, next_position: Tensor):
    """The seam's gather, carrying the real-token mask along; contiguous positions number the real
    tokens (padding does not advance them) and move the suffix's first position with them."""
    pad = pad.gather(1, sequence_index(layout, keep_set).to(pad.device))
    h, pos, layout = apply_keep_set(h, pos, layout, keep_set)
    if keep_set.positions == "contiguous":
        pos, next_position = positions(pad), pad.sum(dim=1)
    return h, pos, pad, layout, next_position
