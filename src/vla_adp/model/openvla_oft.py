"""OpenVLA-OFT assembled: embed -> [prune] -> bidirectional Llama -> action head (docs/reference.md §1).

    pixels ──► FusedFeaturizer ──► Projector ─────────────┐ visual (B, V, D)
    proprio ─► ProprioProjector ──────────────────────────┤ (B, 1, D)
    BOS + prompt + '▁' ─► embed_tokens ───────────────────┤
    56 zero action slots, </s> embedding ─────────────────┘
             [BOS | visual | proprio | prompt | slots | </s>]   positions 0..L-1
                              │  pruner.at_layer(ℓ) may cut visual tokens before layer ℓ
                              ▼
                 LlamaDecoder (no causal mask) + final RMSNorm
                              │  hidden[action_hidden(slice)]  (upstream: from the '▁' token)
                              ▼
          L1RegressionActionHead ─► (B, chunk, action_dim) in [-1, 1]-ish (no clip)
          or discrete: lm_head argmax ─► bin centres

Vision, projector, each run of decoder layers and the head go through ``self.executor``
(:mod:`vla_adp.model.executor`): eager by default, CUDA graphs per kept length or compiled on request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vla_adp.constants import STOP_ID
from vla_adp.model.config import OFTArgs
from vla_adp.model.executor import EAGER, Executor
from vla_adp.model.heads import L1RegressionActionHead, ProprioProjector, Projector, discrete_actions
from vla_adp.model.invariance import per_row
from vla_adp.model.llm import LlamaDecoder
from vla_adp.model.vision import FusedFeaturizer
from vla_adp.seam.context import LayerContext, Pruner
from vla_adp.seam.keep import KeepSet, apply_keep_set, sequence_index
from vla_adp.seam.layout import TokenLayout
from vla_adp.utils.timing import NullStopwatch

DECODES = ("l1", "discrete")  # the L1 action head, or lm_head argmax over the action bins


@dataclass
class OFTInputs:
    """One batch of model inputs.

    Args:
        pixels: (B, C·N, H, W) normalised pixels (C = 6 fused, 3 single tower).
        input_ids: (B, 1 + n_prompt) BOS, prompt and the trailing '▁'.
        proprio: (B, proprio_dim) normalised state, or None without a proprio token.
        prompt_mask: optional (B, 1 + n_prompt) bool, False on right-padding (batched training).
    """

    pixels: Tensor
    input_ids: Tensor
    proprio: Tensor | None = None
    prompt_mask: Tensor | None = None


@dataclass
class Embedded:
    hidden: Tensor  # (B, L, D)
    position_ids: Tensor  # (B, L)
    layout: TokenLayout
    visual: Tensor  # (B, V, D) projector outputs
    key_mask: Tensor | None = None  # (B, L) bool or None


@dataclass
class OFTOutput:
    actions: Tensor  # (B, chunk, action_dim) normalised
    hidden: Tensor  # (B, n_action, D) the hidden states the head read
    layout: TokenLayout  # final (possibly pruned) layout
    keep_sets: list[KeepSet] = field(default_factory=list)
    seq_lens: list[int] = field(default_factory=list)  # tokens each decoder layer ran on (FLOPs)


class OpenVLAOFT(nn.Module):
    def __init__(self, args: OFTArgs, with_action_head: bool = True):
        super().__init__()
        self.args = args
        d = args.llm.dim
        self.vision_backbone = FusedFeaturizer(args.towers, args.n_images)
        self.projector = Projector(args.vision_dim, args.projector_hidden, d)
        self.language_model = LlamaDecoder(args.llm)
        self.proprio_projector = ProprioProjector(args.proprio_dim, d) if args.use_proprio else None
        self.action_head = (
            L1RegressionActionHead(d, args.action_dim, args.head_hidden, args.head_blocks) if with_action_head else None
        )
        self.executor: Executor = EAGER  # how fixed-shape blocks run (eager, CUDA graphs, compiled)
        self.batch_invariant = False  # batch-dependent stages row by row (vla_adp.model.invariance)

    def set_executor(self, executor: Executor | None) -> None:
        """Run vision, projector, decoder segments and head through ``executor`` (None: eagerly)."""
        self.executor = EAGER if executor is None else executor

    def set_batch_invariant(self, on: bool) -> None:
        """Run the stages whose CPU kernels depend on the batch (proprio projector, SiLU) row by row,
        so that each row of a batched forward is bit-identical to its batch-1 forward
        (:mod:`vla_adp.model.invariance`); batch 1 is unchanged either way."""
        self.batch_invariant = bool(on)
        self.language_model.set_batch_invariant(on)

    # -- the token sequence -----------------------------------------------------------------
    def layout(self, inputs: OFTInputs) -> TokenLayout:
        """The unpruned layout of ``inputs`` (:meth:`~vla_adp.model.config.OFTArgs.token_layout`)."""
        return self.args.token_layout(inputs.input_ids.shape[1] - 1)

    # -- embedding --------------------------------------------------------------------------
    def embed(self, inputs: OFTInputs, timer=NullStopwatch()) -> Embedded:
        llm = self.language_model
        with timer("vision"):
            patches = self.executor.run("vision", self.vision_backbone, inputs.pixels.to(self.dtype))
        with timer("projector"):
            visual = self.executor.run("projector", self.projector, patches)  # (B, V, D)
            tok = llm.embed_tokens(inputs.input_ids)  # (B, 1+P, D)
            b = tok.shape[0]
            parts = [tok[:, :1], visual]
            if self.proprio_projector is not None:
                if inputs.proprio is None:
                    raise ValueError("this model has a proprio projector but no proprio state was given")
                proprio = inputs.proprio.to(self.dtype)  # a one-row GEMV at batch 1: per row to match
                state = per_row(self.proprio_projector, proprio) if self.batch_invariant else self.proprio_projector(proprio)
                parts.append(state[:, None])
            slots = tok.new_zeros(b, self.args.n_action_slots, tok.shape[-1])
            stop = llm.embed_tokens(torch.full((b, 1), STOP_ID, device=tok.device))
            hidden = torch.cat([*parts, tok[:, 1:], slots, stop], dim=1)
        layout = self.layout(inputs)
        key_mask, position_ids = self._mask_and_positions(inputs, layout, hidden)
        return Embedded(hidden, position_ids, layout, visual, key_mask)

    @staticmethod
    def _mask_and_positions(inputs: OFTInputs, layout: TokenLayout, hidden: Tensor):
        b, length = hidden.shape[:2]
        if inputs.prompt_mask is None:
            return None, torch.arange(length, device=hidden.device).expand(b, -1)
        # Right-padded prompts in a training batch: hide the pads and number the real tokens
        # 0..L-1 so each sample sees exactly the positions it would see alone.
        mask = torch.ones(b, length, dtype=torch.bool, device=hidden.device)
        mask[:, layout.prompt] = inputs.prompt_mask[:, 1:].to(hidden.device)
        return mask, (mask.long().cumsum(1) - 1).clamp(min=0)

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        inputs: OFTInputs,
        pruner: Pruner | None = None,
        hooks: frozenset[int] = frozenset(),
        action_slice: str = "upstream",
        decode: str = "l1",
        timer=NullStopwatch(),
    ) -> OFTOutput:
        """Predict one normalised action chunk per batch row.

        Args:
            pruner: called before each decoder layer in ``hooks`` (from ``pruner.begin``).
            action_slice: ``upstream`` (matches OFT training) or ``vla_adp`` (+1, reference ADP).
            decode: ``l1`` (action head) or ``discrete`` (lm_head argmax → bin centres).
        """
        emb = self.embed(inputs, timer)
        hidden, keep_sets, layout, seq_lens = self._decode_layers(emb, pruner, hooks, timer)
        with timer("head"):
            hidden = hidden[:, layout.action_hidden(action_slice)]
            if decode == "l1":  # the discrete path builds its bin table on the host: not capturable
                actions = self.executor.run("head", lambda h: self._actions(h, decode), hidden)
            else:
                actions = self._actions(hidden, decode)
        return OFTOutput(actions, hidden, layout, keep_sets, seq_lens)

    def _decode_layers(self, emb: Embedded, pruner: Pruner | None, hooks: frozenset[int], timer):
        llm, n = self.language_model, self.args.llm.n_layers
        x, pos, layout, mask = emb.hidden, emb.position_ids, emb.layout, emb.key_mask
        keep_sets: list[KeepSet] = []
        seq_lens = [layout.length] * n
        taps: dict = {}  # attention taps a pruner installs through LayerContext.taps (VLA-Cache)
        start = 0
        bad = sorted(h for h in hooks if not 0 <= h < n)
        if bad:
            raise ValueError(f"pruner {getattr(pruner, 'name', pruner)!r} asked for layer(s) {bad}; "
                             f"this decoder has layers 0..{n - 1}")
        for i in sorted(hooks):
            with timer("llm"):
                x = self.executor.run_layers(llm, x, pos, start, i, mask, taps)
            start = i
            with timer("prune"):  # the pruner's scoring and selection
                keep_set = pruner.at_layer(LayerContext(i, x, pos, layout, emb.visual, llm, key_mask=mask,
                                                        taps=taps))
            if keep_set is not None:
                with timer("gather"):  # the shorter sequence (shared by every pruner)
                    x, pos, layout, mask = self._cut(x, pos, layout, mask, keep_set)
                keep_sets.append(keep_set)
                seq_lens[i:] = [layout.length] * (n - i)
        with timer("llm"):
            x = llm.norm(self.executor.run_layers(llm, x, pos, start, n, mask, taps))
        return x, keep_sets, layout, seq_lens

    @staticmethod
    def _cut(x, pos, layout, mask, keep_set: KeepSet):
        """apply_keep_set, carrying a padding key mask along (pads sit in the prompt, never cut)."""
        if mask is not None:
            mask = mask.gather(1, sequence_index(layout, keep_set))
        x, pos, layout = apply_keep_set(x, pos, layout, keep_set)
        if mask is not None and keep_set.positions == "contiguous":
            pos = (mask.long().cumsum(1) - 1).clamp(min=0)  # number the real tokens, as embed() does
        return x, pos, layout, mask

    def _actions(self, hidden: Tensor, decode: str) -> Tensor:
        b = hidden.shape[0]
        shape = (b, self.args.chunk, self.args.action_dim)
        if decode == "l1":
            if self.action_head is None:
                raise ValueError("this checkpoint has no L1 action head; use decode='discrete'")
            return self.action_head(hidden)
        if decode == "discrete":
            logits = self.language_model.lm_head(hidden)
            n_real = self.args.llm.vocab_size - self.args.pad_to_multiple_of
            return discrete_actions(logits, n_real, self.args.n_action_bins).reshape(shape).float()
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device
