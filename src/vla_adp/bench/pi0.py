"""π0.5 rows of the latency benchmark (``vla-adp bench --family pi05``): every π0 pruner on one clock.

The protocol is :mod:`vla_adp.bench.latency`'s (random weights, one fixed synthetic query, interleaved
rounds with warm-up rounds dropped, medians; gated pruners forced to prune every query so that the
pruned shape is timed). The query has LIBERO's π0.5 shape: 2 present cameras of 3 slots (256 image
tokens each at 224 px), ``prompt_tokens`` real prompt tokens (the seam's prefix leaves the padding
and the empty slot out, :meth:`vla_adp.model.pi0.Pi0Model.prefix`), a 50-action chunk, 10 Euler steps.

* ``scaled``: the published π0.5 with widths ÷ 4 and depths ÷ 4 (SigLIP 288×6, VLM Gemma 512 wide,
  MLP 4096, 4 layers of 2 heads × 256 (the published head size), expert 256 wide, MLP 1024, 4
  layers), so one CPU thread runs a query in about a second with the stages' shares close to the
  published ones; the pruners' layer indices (set for 18 layers) scale to the 4 (:func:`pi0_depth_fields`).
* ``tiny``: the test model (:func:`vla_adp.model.pi0.config.tiny_args`, 2 layers), for smoke runs.

Speed-ups are of the whole query (``e2e``) and of the model stages (prefix + denoise), next to the
FLOPs-predicted one (:func:`vla_adp.model.pi0.flops.pi0_flops`, 2 FLOPs per MAC).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from vla_adp.bench import latency as L
from vla_adp.model.pi0.config import GemmaArgs, Pi0Args, SiglipArgs, published_args, tiny_args
from vla_adp.model.pi0.flops import pi0_flops
from vla_adp.model.pi0.pi0 import Pi0Inputs, Pi0Model
from vla_adp.seam.context import Query
from vla_adp.seam.query import run_query
from vla_adp.utils.timing import sync

PI0_MODELS = ("tiny", "scaled")
PI0_STAGES = ("gate", "vision", "prune", "gather", "prefix", "denoise")
PI0_OVERHEAD = ("gate", "prune", "gather")
REF_DEPTH = 18  # the published VLM / expert depth the pruners' default layers are set for
# field -> least value, scaled to a shallower model so the share of layers before the cut stays alike
PI0_DEPTH_FIELDS = {"fastv": {"layer": 1}, "vla_pruner": {"layer": 1, "action_layer": 0}, "sparsevlm": {"layers": 0}}
GATED = ("adp", "random", "inverse")
DEFAULT_PROMPT_TOKENS = 64


def scaled_pi05_args(width_div: int = 4, depth_div: int = 4) -> Pi0Args:
    """The published π0.5 with widths ÷ ``width_div`` and depths ÷ ``depth_div`` (head size kept)."""
    full = published_args("pi05")
    v, g, e = full.vision, full.vlm, full.expert
    depth = max(2, g.depth // depth_div)
    heads = max(1, g.num_heads // width_div)
    vision = SiglipArgs(image_size=v.image_size, patch_size=v.patch_size, width=v.width // width_div,
                        depth=max(2, v.depth // depth_div), num_heads=v.num_heads // width_div,
                        mlp_dim=v.mlp_dim // width_div)
    gemma = dict(depth=depth, num_heads=heads, num_kv_heads=1, head_dim=g.head_dim)
    return replace(full, vision=vision, vlm=GemmaArgs(width=g.width // width_div, mlp_dim=g.mlp_dim // width_div, **gemma),
                   expert=GemmaArgs(width=e.width // width_div, mlp_dim=e.mlp_dim // width_div, **gemma))


def pi0_model_args(name: str) -> Pi0Args:
    if name == "scaled":
        return scaled_pi05_args()
    if name == "tiny":
        return tiny_args("pi05", n_cameras=3)
    raise ValueError(f"π0.5 benchmark model must be one of {PI0_MODELS} on this harness (the published shape is "
                     f"counted by `vla-adp flops --family pi05`), got {name!r}")


def build_pi0_model(name: str, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> Pi0Model:
    """Random weights of the modules' own initialisers (norm offsets 0, adaRMS dense random)."""
    torch.manual_seed(seed)
    model = Pi0Model(pi0_model_args(name))
    return model.to(device=device, dtype=dtype).eval()


def synthetic_pi0_inputs(args: Pi0Args, prompt_tokens: int, device: str = "cpu", seed: int = 0) -> Pi0Inputs:
    """LIBERO's shape: the first 2 of 3 camera slots present, ``prompt_tokens`` real prompt tokens."""
    if not 1 <= prompt_tokens <= args.tokenizer_max_length:
        raise ValueError(f"prompt tokens must be in 1..{args.tokenizer_max_length}, got {prompt_tokens!r}")
    g, side, n = torch.Generator().manual_seed(seed), args.vision.image_size, args.tokenizer_max_length
    images = torch.rand(1, args.n_cameras, 3, side, side, generator=g) * 2 - 1
    masks = torch.tensor([[c < min(2, args.n_cameras) for c in range(args.n_cameras)]])
    tokens = torch.randint(3, args.vocab_size, (1, n), generator=g)
    state = torch.randn(1, args.max_state_dim, generator=g)
    return Pi0Inputs(images.to(device), masks.to(device), tokens.to(device),
                     (torch.arange(n)[None] < prompt_tokens).to(device), state.to(device))


def pi0_depth_fields(name: str, depth: int, given: dict[str, Any]) -> dict[str, Any]:
    """The pruner's default layer indices (set for 18 layers) scaled to ``depth`` (those not given)."""
    if depth == REF_DEPTH or name not in PI0_DEPTH_FIELDS:
        return {}
    from vla_adp.pruning.pi0 import build_pi0_pruner

    defaults = dataclasses.asdict(build_pi0_pruner(name).config)

    def scale(v: int, least: int) -> int:
        return max(least, min(depth - 1, round(v * depth / REF_DEPTH)))

    return {f: tuple(sorted({scale(v, least) for v in defaults[f]})) if isinstance(defaults[f], tuple)
            else scale(defaults[f], least)
            for f, least in PI0_DEPTH_FIELDS[name].items() if f not in given}


def build_pi0_case(spec: str | None, keep: float | None, depth: int) -> L.Case:
    """A configuration; one that cannot be built on π0 is kept with the reason as ``error``."""
    if spec in (None, L.BASELINE):
        return L.Case(L.BASELINE)
    from vla_adp.pruning.pi0 import build_pi0_pruner

    name, fields = L.parse_spec(spec)
    name = name.replace("-", "_")
    label = f"{spec}@{keep:g}" if keep is not None else spec
    try:
        fields = {**pi0_depth_fields(name, depth, fields), **fields}
        forced = L.FORCE_PRUNED if name in GATED else {}
        pruner = build_pi0_pruner(name, keep_ratio=keep, **{**forced, **fields})
    except (ValueError, TypeError) as e:
        return L.Case(label, name, keep, error=f"{type(e).__name__}: {e}", spec=spec)
    shown = name + (":" + ",".join(f"{k}={v}" for k, v in fields.items()) if fields else "")
    return L.Case(f"{shown}@{keep:g}" if keep is not None else shown, name, keep, pruner, spec=spec)


@dataclass
class Pi0Sample:
    ms: dict[str, float]
    prefix_lens: list[int]
    kept_visual: int
    pruned: bool


class Pi0QueryRunner:
    """Timed queries of one π0 model on one fixed input, for any pruner (one long episode each)."""

    def __init__(self, model: Pi0Model, inputs: Pi0Inputs, clock: str = "wall"):
        vision = next(model.vision.parameters())
        self.model, self.clock, self.device = model, clock, vision.device
        self.inputs = dataclasses.replace(inputs, images=inputs.images.to(vision.dtype))
        L.make_timer(self.device, clock)  # fail early on a bad clock/device pair
        self.layout = model.layout(inputs)
        self.noise = torch.randn(1, model.args.chunk_size, model.args.max_action_dim,
                                 generator=torch.Generator().manual_seed(1)).to(self.device)
        self.episode_step: dict[int, int] = {}

    @torch.inference_mode()
    def query(self, pruner=None) -> Pi0Sample:
        clock, timer = L.CLOCKS[self.clock], L.make_timer(self.device, self.clock)
        index = self.episode_step.get(id(pruner), 0)
        self.episode_step[id(pruner)] = index + 1
        query = Query(index, None, eef_pos=np.array([0.01 * index, 0.0, 0.0]), eef_rotvec=np.zeros(3))
        sync(self.device)
        t0 = clock()
        r = run_query(self.model, self.inputs, pruner, query, timer=timer, noise=self.noise)
        sync(self.device)
        e2e = 1e3 * (clock() - t0)
        if not np.isfinite(r.actions).all():
            raise RuntimeError("the benchmark model produced non-finite actions")
        ms = {s: 0.0 for s in PI0_STAGES} | timer.ms() | {"e2e": e2e}
        return Pi0Sample(ms, list(r.output.prefix_lens), r.output.layout.n_visual, bool(r.output.keep_sets))


def measure_pi0(model_name: str, dtype: torch.dtype, specs: list[str], keeps: list[float], reps: int, warmup: int,
                prompt_tokens: int | None = None, clock: str = "wall", device: str = "cpu", log=print) -> dict[str, Any]:
    """Every configuration of one π0.5 model × dtype, interleaved; per-stage medians and speed-ups.

    ``prompt_tokens``: real prompt tokens; None = 64 (a LIBERO task with LeRobot's state-in-prompt;
    docs/pi0.md), at most the model's prompt slots."""
    model = build_pi0_model(model_name, dtype, device)
    prompt_tokens = prompt_tokens or min(DEFAULT_PROMPT_TOKENS, model.args.tokenizer_max_length)
    runner = Pi0QueryRunner(model, synthetic_pi0_inputs(model.args, prompt_tokens, device), clock)
    depth = model.args.vlm.depth
    cases = [build_pi0_case(None, None, depth)] + [build_pi0_case(s, k, depth) for s in specs for k in keeps]
    for case in cases:  # one warm-up query each; run-time failures are reported, not fatal
        if case.error is None:
            try:
                runner.query(case.pruner)
            except (ValueError, RuntimeError, IndexError) as e:
                case.error = f"{type(e).__name__}: {e}"
    tasks = {c.label: (lambda c=c: runner.query(c.pruner)) for c in cases if not c.error}
    log(f"[bench] pi05 {model_name} {dtype} {device}: {len(tasks)} tasks × ({warmup} + {reps}) rounds")
    samples = L.interleave(tasks, reps, warmup, lambda r, n: log(f"[bench]   round {r}/{n}"))
    cameras = len(model.present_cameras(runner.inputs))
    rows = [_row(c, samples.get(c.label, []), model.args, cameras) for c in cases]
    a = model.args
    return {"family": "pi05", "model": model_name, "dtype": str(dtype).removeprefix("torch."), "device": device,
            "threads": torch.get_num_threads(), "clock": clock, "reps": reps, "warmup": warmup,
            "prefix_len": runner.layout.length, "n_visual": runner.layout.n_visual,
            "shape": (f"SigLIP {a.vision.width}×{a.vision.depth}; VLM Gemma {a.vlm.width} (MLP {a.vlm.mlp_dim}) × "
                      f"{a.vlm.depth} layers of {a.vlm.num_heads}×{a.vlm.head_dim}; expert {a.expert.width} "
                      f"(MLP {a.expert.mlp_dim}); chunk {a.chunk_size}, {a.num_steps} steps"),
            "cases": _with_speedups(rows)}


def _row(case: L.Case, samples: list[Pi0Sample], args: Pi0Args, cameras: int) -> dict[str, Any]:
    if case.error or not samples:
        return {"label": case.label, "pruner": case.pruner_name, "keep": case.keep, "error": case.error or "no samples"}
    stages = {k: [s.ms.get(k, 0.0) for s in samples] for k in (*PI0_STAGES, "e2e")}
    stages["model"] = [s.ms.get("prefix", 0.0) + s.ms.get("denoise", 0.0) for s in samples]
    stages["overhead"] = [sum(s.ms.get(k, 0.0) for k in PI0_OVERHEAD) for s in samples]
    mid = samples[len(samples) // 2]
    return {"label": case.label, "pruner": case.pruner_name, "keep": case.keep, "error": None,
            "pruned_share": float(np.mean([s.pruned for s in samples])), "kept_visual": mid.kept_visual,
            "prefix_lens": mid.prefix_lens,
            "flops": float(np.median([pi0_flops(args, s.prefix_lens, cameras=cameras).total for s in samples])),
            "stages": {k: dataclasses.asdict(L.summarize(v)) for k, v in stages.items()}, "samples": stages}


def _with_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = rows[0]
    for row in rows[1:]:
        if row.get("error"):
            continue
        med = lambda r, k: r["stages"][k]["median"]  # noqa: E731
        pair = L.summarize(L.paired_ratios(base["samples"]["e2e"], row["samples"]["e2e"]))
        row["speedup"] = {"e2e": med(base, "e2e") / med(row, "e2e"), "e2e_paired_p10": pair.p10,
                          "e2e_paired_p90": pair.p90, "model": med(base, "model") / med(row, "model"),
                          "predicted": base["flops"] / row["flops"]}
    return rows


def pi0_table(run: dict[str, Any]) -> str:
    """Markdown rows: medians per stage (ms), kept tokens, FLOPs and speed-ups vs unpruned."""
    head = (f"### {run['family']} {run['model']} {run['dtype']} {run['device']} ({run['threads']} thread(s), "
            f"{run['clock']} clock, {run['reps']} rounds after {run['warmup']}): prefix {run['prefix_len']} tokens, "
            f"{run['n_visual']} image tokens\n\n{run['shape']}\n")
    lines = [head, "| config | kept | vision | prefix | denoise | overhead | e2e ms | GFLOPs | speed-up e2e [p10–p90] "
             "| model (prefix+denoise) | predicted |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in run["cases"]:
        if r.get("error"):
            lines.append(f"| {r['label']} | error: {r['error']} |" + " |" * 9)
            continue
        m = {k: v["median"] for k, v in r["stages"].items()}
        s = r.get("speedup")
        sp = (f"{s['e2e']:.2f}× [{s['e2e_paired_p10']:.2f}–{s['e2e_paired_p90']:.2f}] | {s['model']:.2f}× | "
              f"{s['predicted']:.2f}×") if s else "1 | 1 | 1"
        kept = f"{r['kept_visual']}" + (f" ({r['pruned_share']:.0%} pruned)" if r["pruned_share"] < 1 and r["keep"] else "")
        lines.append(f"| {r['label']} | {kept} | {m['vision']:.1f} | {m['prefix']:.1f} | {m['denoise']:.1f} | "
                     f"{m['overhead']:.1f} | {m['e2e']:.1f} | {r['flops'] / 1e9:.2f} | {sp} |")
    return "\n".join(lines)
