"""One forward pass for many episodes' queries, each row with its own pruner.

:meth:`OpenVLAOFT.forward` runs one pruner over the whole batch (training, benchmarks). Parallel
evaluation batches queries of *different* episodes, each with its own pruner session (ADP's gate,
VLA-Pruner's history), so here the decoder runs batched between cut points and every row's pruner
is called on its own row (a B = 1 slice, exactly what it sees in a serial run):

    rows (same prompt length, same hook layers)
      embed ─► layers [0, ℓ₁) ─► row r: pruner_r.at_layer(slice r) ─► KeepSet_r
               rows whose keep sets have the same per-camera counts and position mode continue
               together (cut, stack);
               rows that differ split into groups, each continuing on its own
      ─► ... ─► layers [ℓ_last, n) ─► norm ─► action head

No padding: rows of a group always have equal lengths, so no key mask is needed. Layers run through
the model's executor (eager, CUDA graphs per shape, compiled), as in ``OpenVLAOFT.forward``; the head
runs eagerly. With the model batch-invariant (``model.set_batch_invariant(True)``, the Policy's
default on a CPU; :mod:`vla_adp.model.invariance`) each row's output is bit-identical to its batch-1
forward at fp32 on a CPU; without, it can differ in the last bits (a GEMV for a one-row proprio
projection, the scalar tail of the SiLU kernel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vla_adp.model.openvla_oft import OFTInputs, OFTOutput, OpenVLAOFT
from vla_adp.seam.context import LayerContext, Pruner
from vla_adp.seam.keep import KeepSet
from vla_adp.seam.layout import TokenLayout
from vla_adp.utils.timing import NullStopwatch


@dataclass
class _Group:
    rows: list[int]  # indices into the batch this forward was called with
    x: Tensor
    pos: Tensor
    layout: TokenLayout
    visual: Tensor
    start: int  # first decoder layer not yet run
    next_hook: int  # index into the sorted hooks


def stack_inputs(inputs: list[OFTInputs]) -> OFTInputs:
    """Rows of equal prompt length into one batch."""
    lengths = {i.input_ids.shape[1] for i in inputs}
    if len(lengths) != 1:
        raise ValueError(f"rows of one batch need equal prompt lengths, got {sorted(lengths)}")
    proprio = None if inputs[0].proprio is None else torch.cat([i.proprio for i in inputs])
    return OFTInputs(torch.cat([i.pixels for i in inputs]), torch.cat([i.input_ids for i in inputs]), proprio)


def forward_rows(model: OpenVLAOFT, inputs: OFTInputs, pruners: list[Pruner | None], hooks: frozenset[int],
                 action_slice: str = "upstream", decode: str = "l1", timer=NullStopwatch()) -> list[OFTOutput]:
    """One :class:`OFTOutput` (batch 1) per row; ``hooks`` are the layers every row's pruner asked for."""
    n = model.args.llm.n_layers
    bad = sorted(h for h in hooks if not 0 <= h < n)
    if bad:
        raise ValueError(f"pruner asked for layer(s) {bad}; this decoder has layers 0..{n - 1}")
    if hooks and any(p is None for p in pruners):
        raise ValueError("rows with hook layers need a pruner each")
    llm, order = model.language_model, sorted(hooks)
    emb = model.embed(inputs, timer)
    b = emb.hidden.shape[0]
    keep_sets: list[list[KeepSet]] = [[] for _ in range(b)]
    seq_lens = [[emb.layout.length] * n for _ in range(b)]
    outputs: list[OFTOutput | None] = [None] * b
    todo = [_Group(list(range(b)), emb.hidden, emb.position_ids, emb.layout, emb.visual, 0, 0)]
    while todo:
        g = todo.pop()
        split = False
        while g.next_hook < len(order):
            i = order[g.next_hook]
            g.next_hook += 1
            with timer("llm"):
                g.x = model.executor.run_layers(llm, g.x, g.pos, g.start, i, None)
            g.start = i
            with timer("prune"):
                row_keeps = [pruners[r].at_layer(LayerContext(i, g.x[j:j + 1], g.pos[j:j + 1], g.layout,
                                                              g.visual[j:j + 1], llm))
                             for j, r in enumerate(g.rows)]
            parts = _split_by_keep(row_keeps)
            if len(parts) > 1:  # rows kept different counts: each part continues on its own
                todo += [_cut_part(model, g, members, row_keeps, keep_sets, seq_lens, i, n, timer)
                         for members in parts]
                split = True
                break
            if row_keeps[0] is not None:
                g = _cut_part(model, g, parts[0], row_keeps, keep_sets, seq_lens, i, n, timer)
        if split:
            continue
        with timer("llm"):
            x = llm.norm(model.executor.run_layers(llm, g.x, g.pos, g.start, n, None))
        with timer("head"):
            hidden = x[:, g.layout.action_hidden(action_slice)]
            actions = model._actions(hidden, decode)
        for j, r in enumerate(g.rows):
            outputs[r] = OFTOutput(actions[j:j + 1], hidden[j:j + 1], g.layout, keep_sets[r], seq_lens[r])
    return outputs


def _split_by_keep(row_keeps: list[KeepSet | None]) -> list[list[int]]:
    """Positions (in the group) of rows that can continue together: same kept count per camera and
    the same position mode."""
    parts: dict[object, list[int]] = {}
    for j, k in enumerate(row_keeps):
        sig = None if k is None else (k.views, k.tokens is not None, k.positions)
        parts.setdefault(sig, []).append(j)
    return list(parts.values())


def _cut_part(model, g: _Group, members: list[int], row_keeps, keep_sets, seq_lens, layer, n, timer) -> _Group:
    """The group's rows ``members`` (positions in the group), cut by their keeps if they have any."""
    idx = torch.tensor(members, device=g.x.device)
    x, pos, visual = g.x.index_select(0, idx), g.pos.index_select(0, idx), g.visual.index_select(0, idx)
    rows = [g.rows[j] for j in members]
    first = row_keeps[members[0]]
    layout = g.layout
    if first is not None:
        ks = [row_keeps[j] for j in members]
        tokens = torch.cat([k.tokens for k in ks]) if first.tokens is not None else None
        keep_set = KeepSet(torch.cat([k.visual_index for k in ks]), first.views, tokens, first.positions)
        with timer("gather"):
            x, pos, layout, _ = model._cut(x, pos, layout, None, keep_set)
        for r, k in zip(rows, ks):
            keep_sets[r].append(k)
            seq_lens[r][layer:] = [layout.length] * (n - layer)
    return _Group(rows, x, pos, layout, visual, g.start, g.next_hook)
