"""OpenVLA assembled: embed -> causal Llama prefill [prune] -> greedy decoding of the action tokens.

    pixels ──► FusedFeaturizer ──► Projector ───────┐ visual (B, V, D)
    BOS + prompt + '▁' ─► embed_tokens ─────────────┤
                     [BOS | visual | prompt … '▁']  positions 0..L-1   (PrefillLayout)
                                   │  pruner.at_layer(ℓ) may cut visual tokens before layer ℓ;
                                   │  each layer caches the keys/values it ran on (the kept ones after a cut)
                                   ▼
                 causal Llama prefill ──► lm_head(last row) ──► argmax = action token 1
                                   │
         token t ─► embed ─► causal Llama, one row at position p_last + t, attending to the cache
                       ──► argmax = action token t+1          (t = 1 .. n_tokens-1)
                                   ▼
             bin de-tokenisation (model/openvla/actions.py) ──► (B, 1, n_tokens) in [-1, 1]

This is ``OpenVLAForActionPrediction.predict_action`` (``openvla/openvla``,
``prismatic/extern/hf/modeling_prismatic.py``): patches after BOS, ``generate`` with
``max_new_tokens = action_dim``, greedy, KV cache, bf16 in deployment. The vision backbone and the
projector are OpenVLA-OFT's modules (same Prismatic checkpoint keys); only the decoder is causal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from vla_adp.model.heads import Projector
from vla_adp.model.llm import apply_rope
from vla_adp.model.openvla.actions import tokens_to_actions
from vla_adp.model.openvla.config import OpenVLAArgs
from vla_adp.model.openvla.decoder import CausalLlama, KVCache
from vla_adp.model.openvla.layout import PrefillLayout
from vla_adp.model.vision import FusedFeaturizer
from vla_adp.seam.context import LayerContext, Pruner
from vla_adp.seam.keep import KeepSet, apply_keep_set
from vla_adp.utils.timing import NullStopwatch

DEFAULT_ACTION_TOKENS = 7  # upstream: len(norm_stats[unnorm_key]["action"]["q01"])


@dataclass
class OpenVLAInputs:
    """One batch of queries (rows share the prompt length: upstream generates batch 1).

    Args:
        pixels: (B, C·N, H, W) normalised pixels (C = 6 fused, 3 single tower).
        input_ids: (B, 1 + n_prompt) BOS, prompt and the trailing '▁' (29871 in Llama-2).
    """

    pixels: Tensor
    input_ids: Tensor


@dataclass
class Prefill:
    hidden: Tensor  # (B, L', D) output of the last layer, before the final norm
    position_ids: Tensor  # (B, L') positions of the rows that reached the last layer
    layout: PrefillLayout  # final (possibly pruned) layout
    cache: KVCache
    keep_sets: list[KeepSet] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)  # tokens each layer ran on
    layouts: list[PrefillLayout] = field(default_factory=list)  # the layout each layer ran on (= its cache's)


@dataclass
class DecodeContext:
    """Decode step ``step`` (1 .. T-1) at layer ``index``, after the layer appended this row's key.

    Args:
        hidden: (B, 1, D) input of layer ``index`` for the token being fed (generated token ``step``).
        position_ids: (B, 1) its RoPE position.
        keys: (B, H_kv, S, hd) everything layer ``index`` has cached: the prefill rows it ran on
            (``layout``), then the generated tokens, this one last.
        layout: the prefill layout layer ``index`` ran on (pruned if a cut came before it).
    """

    step: int
    index: int
    hidden: Tensor
    position_ids: Tensor
    keys: Tensor
    layout: PrefillLayout
    llm: CausalLlama

    def attention_probs(self) -> Tensor:
        """Softmax attention of this row over the cached keys, as the layer computed it: (B, H, 1, S), float32."""
        layer = self.llm.layers[self.index]
        attn = layer.self_attn
        cos, sin = self.llm.rope(self.position_ids, self.hidden.dtype)
        q = apply_rope(attn._heads(attn.q_proj(layer.input_layernorm(self.hidden)), attn.n_heads), cos, sin)
        k = attn._expand_kv(self.keys)
        return ((q.float() @ k.float().transpose(-1, -2)) / math.sqrt(attn.head_dim)).softmax(dim=-1)


@runtime_checkable
class DecodeObserver(Protocol):
    """A pruner that also reads the decode steps (VLA-Pruner's action-to-vision attention on OpenVLA).

    ``decode_layers()`` names the layers to report; the model calls ``at_decode(ctx)`` for each of them
    at every decode step. Read-only: observing changes no output.
    """

    def decode_layers(self) -> frozenset[int]: ...

    def at_decode(self, ctx: DecodeContext) -> None: ...


@dataclass
class OpenVLAOutput:
    tokens: Tensor  # (B, T) generated ids
    logits: Tensor  # (B, T, vocab) float32 logits each token was chosen from
    actions: Tensor  # (B, 1, T) normalised actions, float64 (upstream's numpy decoding)
    layout: PrefillLayout  # final (possibly pruned) prefill layout
    keep_sets: list[KeepSet] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)  # prefill tokens each decoder layer ran on
    cache_lens: list[int] = field(default_factory=list)  # keys each layer held after the prefill


class OpenVLA(nn.Module):
    def __init__(self, args: OpenVLAArgs):
        super().__init__()
        self.args = args
        self.vision_backbone = FusedFeaturizer(args.towers, args.n_images)
        self.projector = Projector(args.vision_dim, args.projector_hidden, args.llm.dim)
        self.language_model = CausalLlama(args.llm)

    # -- embedding --------------------------------------------------------------------------
    def set_batch_invariant(self, on: bool) -> None:
        """Nothing to switch: the OpenVLA policy answers one query per forward (upstream generates
        batch 1), and a batch-1 forward is its own reference (:mod:`vla_adp.model.invariance`)."""

    def layout(self, inputs: OpenVLAInputs) -> PrefillLayout:
        """The unpruned prefill layout of ``inputs`` (the seam's ``model.layout(inputs)``, as OFT's)."""
        return PrefillLayout((self.args.patches_per_image,) * self.args.n_images, inputs.input_ids.shape[1] - 1)

    def embed(self, inputs: OpenVLAInputs, timer=NullStopwatch()) -> tuple[Tensor, Tensor, PrefillLayout]:
        """[BOS | visual | prompt] embeddings (B, L, D), the projector outputs (B, V, D), the layout."""
        if inputs.input_ids.dim() != 2 or inputs.input_ids.shape[1] < 2:
            raise ValueError(f"input_ids must be (B, 1 + n_prompt) with BOS and at least one prompt id, "
                             f"got shape {tuple(inputs.input_ids.shape)}")
        with timer("vision"):
            patches = self.vision_backbone(inputs.pixels.to(self.dtype))
        with timer("projector"):
            visual = self.projector(patches)  # (B, V, D)
            tok = self.language_model.embed_tokens(inputs.input_ids)  # (B, 1+P, D)
            hidden = torch.cat([tok[:, :1], visual, tok[:, 1:]], dim=1)
        return hidden, visual, self.layout(inputs)

    # -- prefill ----------------------------------------------------------------------------
    def prefill(self, inputs: OpenVLAInputs, pruner: Pruner | None = None, hooks: frozenset[int] = frozenset(),
                timer=NullStopwatch()) -> Prefill:
        """The prompt through every layer, the pruner cutting before the layers in ``hooks``."""
        llm, n = self.language_model, self.args.llm.n_layers
        x, visual, layout = self.embed(inputs, timer)
        pos = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        cache, keep_sets, seq_lens, start = KVCache(n), [], [layout.length] * n, 0
        layouts = [layout] * n
        bad = sorted(h for h in hooks if not 0 <= h < n)
        if bad:
            raise ValueError(f"pruner {getattr(pruner, 'name', pruner)!r} asked for layer(s) {bad}; "
                             f"this decoder has layers 0..{n - 1}")
        for i in sorted(hooks):
            with timer("llm"):
                x = llm.run_layers(x, pos, start, i, cache=cache)
            start = i
            with timer("prune"):
                keep_set = pruner.at_layer(LayerContext(i, x, pos, layout, visual, llm))
            if keep_set is not None:
                with timer("gather"):
                    x, pos, layout = apply_keep_set(x, pos, layout, keep_set)
                keep_sets.append(keep_set)
                seq_lens[i:] = [layout.length] * (n - i)
                layouts[i:] = [layout] * (n - i)
        with timer("llm"):
            x = llm.run_layers(x, pos, start, n, cache=cache)
        return Prefill(x, pos, layout, cache, keep_sets, seq_lens, layouts)

    # -- decoding ---------------------------------------------------------------------------
    def forward(self, inputs: OpenVLAInputs, pruner: Pruner | None = None, hooks: frozenset[int] = frozenset(),
                n_tokens: int = DEFAULT_ACTION_TOKENS, timer=NullStopwatch()) -> OpenVLAOutput:
        """Greedy decoding of ``n_tokens`` action tokens after a (possibly pruned) prefill."""
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
            raise ValueError(f"n_tokens (the action dimension) must be a positive int, got {n_tokens!r}")
        pre = self.prefill(inputs, pruner, hooks, timer)
        cache_lens = pre.cache.lengths()
        llm = self.language_model
        # The generated tokens follow the last prefill row: with original positions (FastV) that is
        # L, L+1, ...; with contiguous ones (ADP) the pruned sequence's own numbering continues.
        next_pos = pre.position_ids[:, -1:] + 1  # (B, 1)
        with timer("decode"):
            step_logits = [llm.logits(pre.hidden[:, -1:]).float()]
            tokens = [step_logits[-1][:, -1].argmax(dim=-1)]
            for t in range(1, n_tokens):
                x = llm.embed_tokens(tokens[-1][:, None])
                h = self._decode_step(x, next_pos + (t - 1), pre, pruner, t)
                step_logits.append(llm.logits(h).float())
                tokens.append(step_logits[-1][:, -1].argmax(dim=-1))
        ids = torch.stack(tokens, dim=1)  # (B, T)
        normalised = tokens_to_actions(ids.cpu().numpy(), self.args.n_real_vocab, self.args.n_action_bins)
        actions = torch.from_numpy(normalised)[:, None]  # (B, 1, T)
        return OpenVLAOutput(ids, torch.cat(step_logits, dim=1), actions, pre.layout, pre.keep_sets, pre.seq_lens,
                             cache_lens)

    def _decode_step(self, x: Tensor, pos: Tensor, pre: Prefill, pruner, step: int) -> Tensor:
        """One generated token through every layer; a :class:`DecodeObserver` sees the layers it asked for."""
        llm, n = self.language_model, len(self.language_model.layers)
        watch = sorted(pruner.decode_layers()) if isinstance(pruner, DecodeObserver) else []
        start = 0
        for i in watch:
            x_in = llm.run_layers(x, pos, start, i, cache=pre.cache)
            x = llm.run_layers(x_in, pos, i, i + 1, cache=pre.cache)
            pruner.at_decode(DecodeContext(step, i, x_in, pos, pre.cache.keys[i], pre.layouts[i], llm))
            start = i + 1
        return llm.run_layers(x, pos, start, n, cache=pre.cache)

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device
