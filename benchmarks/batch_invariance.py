"""Which stages of a batched forward depend on the batch: every op batched vs row by row (issue 17).

Runs :func:`vla_adp.model.batched.forward_rows` on B queries of a checkpoint and intercepts every
torch op (``TorchFunctionMode``). For each op that computes on a tensor with a batch dimension
(``shape[0] == b`` of the group it runs on, b > 1; parameters excluded), the op is called again on
each row's slice of the *same* inputs and the rows are compared bit for bit with the batched result.
So each stage is checked on identical inputs, and a difference is that op's own batch dependence,
not one carried in from an earlier stage. Pure data movement (views, cat, gather, copies) is not
re-run. Ops are named by the module they run in (``language_model.layers.0.mlp``) and the op.

Queries: unpruned, and ADP with the static schedule (every query prunes) at several keep ratios
so that rows split into groups of different kept lengths, at layer 0 and after layer 1, with
contiguous and original positions. Then the end-to-end check: each row of ``forward_rows`` against
its own batch-1 ``model.forward`` (actions and hidden states, bit for bit), for the current batched
path (``--no-batch-invariant``) and for ``model.set_batch_invariant(True)``.

    PYTHONPATH=src python benchmarks/batch_invariance.py --checkpoint src/vla_adp/assets/metaworld_policy \
        --threads 1 2 --batch 5 [--batch-invariant] [--ops]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from vla_adp.model.batched import forward_rows, stack_inputs
from vla_adp.model.invariance import per_row, silu_per_row
from vla_adp.policy import Policy
from vla_adp.pruning.config import ADPConfig, GateConfig
from vla_adp.pruning.pruners.adp import ADPPruner

# Ops that only move data: exact whatever the batch, not re-run.
MOVES = {"view", "reshape", "transpose", "permute", "__getitem__", "expand", "contiguous", "clone", "cat",
         "index_select", "gather", "unbind", "split", "chunk", "to", "float", "detach", "unsqueeze", "squeeze",
         "flatten", "new_zeros", "new_ones", "stack", "narrow", "select", "repeat_interleave", "__setitem__",
         "copy_", "expand_as", "type_as", "long", "cpu", "numpy", "tolist", "masked_fill", "argsort", "sort",
         "topk"}


class OpComparator(TorchFunctionMode):
    """Re-runs every computing op row by row and counts the ops whose rows differ from the batch."""

    def __init__(self):
        super().__init__()
        self.where: list[str] = []  # qualified names of the modules running now (forward hooks)
        self.stats: dict[tuple[str, str], list] = collections.OrderedDict()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        if name in MOVES or name.endswith("_") or name.startswith("__") and name not in ("__mul__", "__add__",
                                                                                      "__rmul__", "__radd__",
                                                                                      "__sub__", "__rsub__",
                                                                                      "__truediv__", "__matmul__",
                                                                                      "__neg__"):
            return out
        if not isinstance(out, torch.Tensor) or not out.is_floating_point() or out.dim() == 0:
            return out
        b = _batch_of(args, kwargs)
        if b is None or b < 2 or out.shape[0] != b:
            return out
        try:
            rows = [func(*_row(args, b, r), **_row(kwargs, b, r)) for r in range(b)]
            again = torch.cat(rows)
        except Exception:  # an op whose arguments name the batch size (view(b, ...)): not re-runnable
            return out
        if again.shape != out.shape:
            return out
        key = (self.where[-1] if self.where else "", name)
        s = self.stats.setdefault(key, [0, 0, 0, 0.0, set()])
        same = torch.eq(again, out) | (torch.isnan(again) & torch.isnan(out))
        s[0] += 1
        if not bool(same.all()):
            s[1] += 1
            s[2] += int((~same).sum())
            s[3] = max(s[3], float((again - out).abs().max()))
            s[4].add(tuple(out.shape))
        return out


def _is_batched(t, b) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, torch.nn.Parameter) and t.dim() > 0 and t.shape[0] == b


def _batch_of(args, kwargs):
    for a in [*args, *kwargs.values()]:
        if isinstance(a, torch.Tensor) and not isinstance(a, torch.nn.Parameter) and a.dim() > 0:
            return a.shape[0]
        if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return a[0].shape[0]
    return None


def _row(obj, b, r):
    if _is_batched(obj, b):
        return obj[r:r + 1]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_row(o, b, r) for o in obj)
    if isinstance(obj, dict):
        return {k: _row(v, b, r) for k, v in obj.items()}
    return obj


def _track_modules(model, comparator: OpComparator):
    handles = []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: comparator.where.append(n)))
        handles.append(mod.register_forward_hook(lambda m, a, o: comparator.where.pop() and None))
    return handles


def observations(policy: Policy, b: int, instruction: str) -> list[dict]:
    size, dim = policy.model.args.image_size, policy.platform.proprio_dim
    out = []
    for i in range(b):
        rng = np.random.default_rng(100 + i)
        out.append({"full_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                    "state": rng.normal(size=dim) * 0.1, "instruction": instruction})
    return out


def cases(b: int):
    """(name, per-row pruner factory or None)."""
    keeps = [0.5, 0.25, 0.5, 0.75, 0.25, 0.5][:b]
    yield "unpruned", None
    for layer, positions in ((0, "contiguous"), (1, "original")):
        def make(r, layer=layer, positions=positions):
            return ADPPruner(ADPConfig(keep_ratio=keeps[r % len(keeps)], layer=layer, positions=positions,
                                       gate=GateConfig(schedule="static")))
        yield f"ADP keep {sorted(set(keeps))} layer {layer} {positions}", make


def run(policy: Policy, b: int, batch_invariant: bool, ops: bool, instruction: str) -> bool:
    model = policy.model
    model.set_batch_invariant(batch_invariant)
    obs = observations(policy, b, instruction)
    inputs = [policy.inputs(o)[0] for o in obs]
    stacked = stack_inputs(inputs)
    exact = True
    for name, make in cases(b):
        pruners = [None if make is None else make(r) for r in range(b)]
        hooks = frozenset() if make is None else frozenset({pruners[0].prune_layer})
        if ops:
            comp = OpComparator()
            handles = _track_modules(model, comp)
            try:
                with comp:
                    forward_rows(model, stacked, pruners, hooks)
            finally:
                for h in handles:
                    h.remove()
            bad = [(k, s) for k, s in comp.stats.items() if s[1]]
            print(f"  [{name}, L={stacked.input_ids.shape[1]}] {sum(s[0] for s in comp.stats.values())} op calls re-run row by row, "
                  f"{sum(s[1] for _, s in bad)} differ")
            for (where, op), s in bad:
                print(f"    {where or '<top>'} {op}: {s[1]}/{s[0]} calls differ, {s[2]} elements, "
                      f"max |diff| {s[3]:.3g}, shapes {sorted(s[4])[:3]}")
        outs = forward_rows(model, stacked, pruners, hooks)
        diffs = []
        model.set_batch_invariant(False)  # the reference: the plain batch-1 forward of the serial runner
        refs = [model(inputs[r], None if make is None else make(r), hooks, policy.config.action_slice,
                      policy.config.decode) for r in range(b)]
        model.set_batch_invariant(batch_invariant)
        for r in range(b):
            one = refs[r]
            same = torch.equal(one.actions, outs[r].actions) and torch.equal(one.hidden, outs[r].hidden)
            diffs.append(0.0 if same else float((one.actions - outs[r].actions).abs().max()))
        kept = [o.layout.n_visual for o in outs]
        n_bad = sum(d != 0.0 for d in diffs)
        exact &= n_bad == 0
        print(f"  [{name}, L={stacked.input_ids.shape[1]}] end to end (kept visual {kept}): {b - n_bad}/{b} rows bit-identical to batch 1"
              + (f", max |action diff| {max(diffs):.3g}" if n_bad else ""))
    return exact


def timing(policy: Policy, b: int, repeats: int, instruction: str) -> None:
    """Median CPU time (``time.process_time``: robust to a busy machine descheduling this process) of
    one batched forward of B rows with and without batch invariance, interleaved, and of B batch-1
    forwards (what ``--batch 1`` does instead). With one torch thread CPU time is the work done."""
    model = policy.model
    inputs = [policy.inputs(o)[0] for o in observations(policy, b, instruction)]
    stacked = stack_inputs(inputs)
    for name, make in cases(b):
        if "original" in name:
            continue
        hooks = frozenset() if make is None else frozenset({make(0).prune_layer})
        times = {"invariant": [], "plain": [], "one by one": []}
        for _ in range(repeats):
            for mode in times:
                model.set_batch_invariant(mode == "invariant")
                pruners = [None if make is None else make(r) for r in range(b)]
                t = time.process_time()
                if mode == "one by one":
                    for r in range(b):
                        model(inputs[r], pruners[r], hooks)
                else:
                    forward_rows(model, stacked, pruners, hooks)
                times[mode].append(time.process_time() - t)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"  [{name}] median of {repeats}, CPU ms per {b} queries: batched invariant {med['invariant']:.1f}, "
              f"batched plain {med['plain']:.1f} (invariance {100 * (med['invariant'] / med['plain'] - 1):+.1f} %), "
              f"one by one {med['one by one']:.1f}")
    # the two stages alone, on this batch's shapes: what invariance adds per forward
    emb = model.embed(stacked)
    gate = model.language_model.layers[0].mlp.gate_proj(emb.hidden)
    proprio = stacked.proprio
    stages = {"SiLU, one layer": (lambda: F.silu(gate), lambda: silu_per_row(gate.clone()), lambda: gate.clone()),
              "proprio projector": (lambda: model.proprio_projector(proprio),
                                    lambda: per_row(model.proprio_projector, proprio), lambda: None)}
    for name, (plain, invariant, extra) in stages.items():
        t = {"plain": [], "invariant": [], "extra": []}
        for _ in range(20 * repeats):
            for mode, fn in (("plain", plain), ("invariant", invariant), ("extra", extra)):
                t0 = time.process_time()
                fn()
                t[mode].append(time.process_time() - t0)
        med = {k: 1e6 * statistics.median(v) for k, v in t.items()}
        print(f"  [{name}, {tuple(gate.shape) if 'SiLU' in name else tuple(proprio.shape)}] median CPU µs: "
              f"batched {med['plain']:.0f}, per row {med['invariant'] - med['extra']:.0f}")
    model.set_batch_invariant(True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", nargs="+", default=["src/vla_adp/assets/metaworld_policy",
                                                        "src/vla_adp/assets/libero_policy"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=5)
    ap.add_argument("--batch-invariant", action="store_true", help="model.set_batch_invariant(True) (the Policy's default on a CPU)")
    ap.add_argument("--instructions", nargs="+", default=[
        "put the object where it belongs", "put the red object where it belongs",
        "put the small red object where it belongs", "now put the small red object where it belongs"],
        help="one batch per instruction (their prompt lengths change every sequence length)")
    ap.add_argument("--ops", action="store_true", help="also re-run every op row by row (slow)")
    ap.add_argument("--time", type=int, default=0, metavar="R",
                    help="instead: time R interleaved batched forwards with and without invariance")
    a = ap.parse_args(argv)
    ok = True
    for ckpt in a.checkpoint:
        policy = Policy.load(ckpt, dtype=torch.float32)
        for t in a.threads:
            torch.set_num_threads(t)
            mode = "timing" if a.time else "batch_invariant" if a.batch_invariant else "plain batched path"
            print(f"{Path(ckpt).name}, fp32, {t} thread(s), batch {a.batch}, {mode}:")
            if a.time:
                with torch.inference_mode():
                    timing(policy, a.batch, a.time, a.instructions[0])
                continue
            for instruction in a.instructions:
                with torch.inference_mode():
                    ok &= run(policy, a.batch, a.batch_invariant, a.ops, instruction)
    print("all rows bit-identical" if ok else "some rows differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
