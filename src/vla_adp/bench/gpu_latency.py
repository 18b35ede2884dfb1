"""The latency protocol on a GPU, on the path users call: ``Policy.infer`` of the full-size OFT 7B (docs/latency.md).

    python -m vla_adp.bench.gpu_latency --out DIR            # the 7B on cuda (benchmarks/gpu/run.sh)
    python -m vla_adp.bench.gpu_latency --out DIR --dry-run  # tiny shapes on the CPU (the test suite)

What it does, in order, inside a time budget (docs/latency.md is the protocol in prose):

1. Builds a :class:`~vla_adp.policy.Policy` around the OFT 7B (LIBERO: two views, proprio, 8×7 chunk)
   with random bf16 weights allocated on the GPU (:func:`~vla_adp.bench.models.build_model_on_device`),
   a locally trained SentencePiece tokenizer and an instruction of 32 prompt tokens (603 tokens in all).
2. Main table: every configuration — unpruned; ADP at ρ 0.3/0.5/0.7 (static: every query prunes) and
   ADP 0.3 with its action-aware gate driven by a recorded end-effector trace; random; inverse; FastV;
   VLA-Pruner; LightVLA — under two executors, eager and CUDA graphs
   (:class:`~vla_adp.model.executor.Executor`, captured per kept length), interleaved round by round
   (:func:`vla_adp.bench.latency.interleave`); warm-up rounds (graph captures happen there) dropped.
   Per stage by CUDA events (the Policy's section clock), end to end by the host clock around
   ``Policy.infer`` (which returns numpy actions, so it ends synchronised).
3. Attention backends (SDPA auto / flash / memory-efficient / math, and eager softmax) on the unpruned
   and ADP-0.3 queries, eager executor.
4. ``torch.compile`` (and compile + graphs) on the same two queries, compile time reported.
5. Peak memory per configuration (``torch.cuda.max_memory_allocated`` around one query).
6. Roofline floors (:mod:`vla_adp.cost.roofline`) per stage next to every measured row.

A section that would overrun the budget is skipped and says so; a configuration or backend that fails
is reported with its error, not fatal. JSON and markdown go to one folder.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_adp.utils.machine import DTYPES
from vla_adp.constants import get_platform
from vla_adp.bench import latency as L
from vla_adp.cost import roofline as R
from vla_adp.model.executor import Executor, RerunCapture
from vla_adp.policy import Policy, Session

STAGES = ("transforms", "gate", "vision", "projector", "prune", "gather", "llm", "head")
MODEL_STAGES = ("vision", "projector", "prune", "gather", "llm", "head")  # what the roofline floors cover
TRACE = Path(__file__).resolve().parents[3] / "benchmarks" / "gpu" / "gate_trace.json"
ATTENTION = ("sdpa", "flash", "efficient", "math", "eager")


@dataclass(frozen=True)
class ProtocolConfig:
    """Settings of one run (defaults: the 7B on an H100 within 8 minutes).

    Args:
        model: ``7b`` (GPU) or ``tiny`` (the dry run).
        keeps: keep ratios ρ of the pruners with a budget (LightVLA's count is its own).
        reps / warmup: measured and dropped interleaved rounds of the main table.
        side_reps: rounds of the backend and compile sections.
        attention: attention backends of section 3 (``sdpa`` = PyTorch's own choice).
        side_cases: configurations of sections 3 and 4.
        compile: run section 4.
        compile_keys: blocks ``torch.compile`` compiles (the decoder and head by default: compiling
            both ViTs for both views as one graph would take minutes of the budget; they stay eager,
            or graphed in the compile+graphs variant).
        budget_s: wall-clock budget of the whole run; sections that would overrun are skipped.
        gpu: roofline GPU (:data:`vla_adp.cost.roofline.GPUS`).
        trace: JSON end-effector trace that drives the gated ADP case (benchmarks/gpu/record_gate_trace.py).
        dry_run: CPU, graphs emulated by re-running (:class:`~vla_adp.model.executor.RerunCapture`),
            compile traced only (``backend="eager"``), no memory probe.
    """

    model: str = "7b"
    device: str = "cuda"
    dtype: str = "bf16"
    keeps: tuple[float, ...] = (0.3, 0.5, 0.7)
    reps: int = 30
    warmup: int = 3
    side_reps: int = 10
    attention: tuple[str, ...] = ATTENTION
    side_cases: tuple[str, ...] = ("none", "adp@0.3")
    compile: bool = True
    compile_keys: tuple[str, ...] | None = ("llm", "head")
    budget_s: float = 400.0
    gpu: str = "h100-sxm"
    n_prompt: int = 32
    seed: int = 0
    trace: str = str(TRACE)
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.reps < 1 or self.warmup < 0 or self.side_reps < 1:
            raise ValueError(f"need reps >= 1, warmup >= 0, side_reps >= 1; got {self.reps}, {self.warmup}, "
                             f"{self.side_reps}")
        bad = [a for a in self.attention if a not in ATTENTION]
        if bad:
            raise ValueError(f"unknown attention backend(s) {bad}; expected {ATTENTION}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        R.get_gpu(self.gpu)

    @classmethod
    def dry(cls, **overrides) -> "ProtocolConfig":
        """Tiny shapes on the CPU, two measured rounds: every code path but the CUDA-only lines."""
        base = dict(model="tiny", device="cpu", dtype="fp32", keeps=(0.3,), reps=2, warmup=1, side_reps=1,
                    attention=("sdpa", "math", "eager"), budget_s=120.0, dry_run=True)
        return cls(**{**base, **overrides})


# -- building ----------------------------------------------------------------------------------
def build_policy(cfg: ProtocolConfig, folder: Path) -> Policy:
    """A Policy around a random-weight model on the device, with a tokenizer trained into ``folder``."""
    from vla_adp.bench.models import build_model_on_device
    from vla_adp.model.checkpoint import Checkpoint
    from vla_adp.model.tiny import tiny_norm_stats, train_tokenizer

    model = build_model_on_device(cfg.model, DTYPES[cfg.dtype], cfg.device, cfg.seed)
    platform = get_platform("libero")
    tok = train_tokenizer(folder / "tokenizer.model")
    ckpt = Checkpoint(model, model.args, folder, {}, tiny_norm_stats(platform), tok, platform)
    policy = Policy(ckpt)
    if torch.device(cfg.device).type == "cuda":
        policy.stopwatch = L.EventStopwatch
    return policy


def instruction_of_length(policy: Policy, n_prompt: int) -> str:
    """An instruction whose prompt (incl. the trailing '▁') has ``n_prompt`` tokens, or the nearest below."""
    words = "pick up the black bowl between the plate and the ramekin and place it on the plate".split()
    text, i = "", 0
    while i < 4 * n_prompt:
        cand = (text + " " + words[i % len(words)]).strip()
        if len(policy.tokenizer.prompt_ids(cand)) - 1 > n_prompt:
            break
        text, i = cand, i + 1
    return text


@dataclass
class Stream:
    """The observations of one configuration's episode: fixed frames, a state that moves.

    With a ``trace`` (positions after every step) query q sees the position at step q·chunk and the
    Policy is told the steps in between (``record_step``), as in closed loop; at its end the episode
    starts over (``session.reset``).
    """

    images: list[np.ndarray]
    instruction: str
    chunk: int
    trace: list[list[float]] | None = None
    step: int = 0
    episodes: int = 0

    def next(self, policy: Policy, session: Session) -> dict[str, Any]:
        if self.trace is not None and self.step >= len(self.trace):
            session.reset()
            self.step, self.episodes = 0, self.episodes + 1
        if self.trace is not None and self.step > 0:
            for pos in self.trace[self.step - self.chunk + 1:self.step + 1]:
                policy.record_step(np.concatenate([pos, np.zeros(5)]), session)
        pos = self.trace[self.step] if self.trace is not None else [0.01 * self.step / self.chunk, 0.0, 0.0]
        self.step += self.chunk
        return {"full_image": self.images[0], "wrist_image": self.images[1],
                "state": np.concatenate([pos, np.zeros(5)]), "instruction": self.instruction}


@dataclass
class Config:
    """One measured configuration: a pruner (or none) in its own session and observation stream."""

    label: str
    pruner: str | None
    keep: float | None
    session: Session
    stream: Stream
    gated: bool = False
    error: str | None = None


def build_configs(cfg: ProtocolConfig, policy: Policy, images, instruction: str) -> list[Config]:
    """Unpruned, every pruner at every keep ratio (static gate), and ADP 0.3 on the gate trace."""
    from vla_adp.pruning.registry import build_pruner

    n_layers, chunk = policy.model.args.llm.n_layers, policy.model.args.chunk
    specs = ["adp", "random", "inverse", "fastv", "vla_pruner", "lightvla"]
    cases = L.build_cases(specs, list(cfg.keeps), n_layers)
    out = [Config(c.label, c.pruner_name, c.keep, Session(c.pruner), Stream(images, instruction, chunk),
                  error=c.error) for c in cases]
    trace = json.loads(Path(cfg.trace).read_text())["positions"]
    keep = min(cfg.keeps, key=lambda k: abs(k - 0.3))
    gated = build_pruner("adp", keep_ratio=keep)  # the default, dynamic action-aware gate
    out.insert(1 + len(cfg.keeps), Config(f"adp@{keep:g} gate-trace", "adp", keep, Session(gated),
                                          Stream(images, instruction, chunk, trace), gated=True))
    return out


def executors(cfg: ProtocolConfig) -> dict[str, Executor]:
    capture = RerunCapture() if cfg.dry_run else None
    return {"eager": Executor(), "graphs": Executor(graphs=True, capture=capture)}


# -- measuring ---------------------------------------------------------------------------------
@dataclass
class Sample:
    ms: dict[str, float]
    pruned: bool
    kept_visual: int
    seq_lens: list[int]


def query(policy: Policy, c: Config, executor: Executor, context=contextlib.nullcontext) -> Sample:
    """One ``Policy.infer`` of configuration ``c`` through ``executor``, timed end to end and per stage."""
    policy.set_executor(executor)
    obs = c.stream.next(policy, c.session)
    dev = policy.model.device
    with context():
        _sync(dev)
        t0 = time.perf_counter()
        out = policy.infer(obs, c.session)  # numpy actions out: synchronised
        e2e = 1e3 * (time.perf_counter() - t0)
    if not np.isfinite(out["actions"]).all():
        raise RuntimeError(f"{c.label}: the random-weight model produced non-finite actions")
    info = out["info"]
    ms = {s: 0.0 for s in STAGES} | {k: v for k, v in info["timing_ms"].items() if k != "total"} | {"e2e": e2e}
    return Sample(ms, info["pruned"], info["kept_visual"], info["seq_lens"])


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def probe(policy: Policy, configs: list[Config], ex: Executor) -> None:
    """One query each (eager): a configuration that fails is reported, not fatal."""
    for c in configs:
        if c.error is None:
            try:
                query(policy, c, ex)
            except (ValueError, RuntimeError, IndexError) as e:
                c.error = f"{type(e).__name__}: {e}"


def summarize_samples(samples: list[Sample]) -> dict[str, Any]:
    per = {k: [s.ms.get(k, 0.0) for s in samples] for k in (*STAGES, "e2e")}
    per["overhead"] = [sum(s.ms[k] for k in L.OVERHEAD) for s in samples]
    per["model"] = [sum(s.ms[k] for k in MODEL_STAGES) for s in samples]
    lens = [tuple(s.seq_lens) for s in samples]
    mode = max(set(lens), key=lens.count)
    counts = [[list(x), lens.count(x)] for x in sorted(set(lens))]
    return {"stages": {k: asdict(L.summarize(v)) for k, v in per.items()},
            "mean_ms": {k: float(np.mean(v)) for k, v in per.items()},
            "samples": per, "pruned_share": float(np.mean([s.pruned for s in samples])),
            "kept_visual": asdict(L.summarize([s.kept_visual for s in samples])), "seq_lens": list(mode),
            "seq_lens_counts": counts}


def main_table(cfg: ProtocolConfig, policy: Policy, configs: list[Config], log) -> dict[str, Any]:
    """Every configuration × {eager, graphs}, interleaved; each pair first runs once on its own (graph
    capture happens there), and a pair that fails is reported with its error."""
    exs = executors(cfg)
    # Each (configuration, executor) has its own session and stream: a gate sees its own episode.
    own = {(c.label, name): copy.deepcopy(c) for c in configs if not c.error for name in exs}
    failed: dict[tuple[str, str], str] = {}
    for (label, name), c in own.items():
        try:
            query(policy, c, exs[name])
        except Exception as e:  # noqa: BLE001 - e.g. a block that cannot be captured on this GPU
            failed[(label, name)] = f"{type(e).__name__}: {str(e)[:300]}"
    flat = {f"{label} | {name}": (lambda c=c, ex=exs[name]: query(policy, c, ex))
            for (label, name), c in own.items() if (label, name) not in failed}
    log(f"[gpu-latency] main table: {len(flat)} tasks x ({cfg.warmup} + {cfg.reps}) rounds")
    before = {n: dict(ex.stats) for n, ex in exs.items()}
    t0 = time.perf_counter()
    samples = L.interleave(flat, cfg.reps, cfg.warmup)
    rows = []
    for c in configs:
        for name in exs:
            row = {"config": c.label, "pruner": c.pruner, "keep": c.keep, "gated": c.gated, "executor": name,
                   "error": c.error or failed.get((c.label, name))}
            if not row["error"]:
                row |= summarize_samples(samples[f"{c.label} | {name}"])
            rows.append(row)
    stats = {n: {k: ex.stats[k] - before[n].get(k, 0) for k in ex.stats} for n, ex in exs.items()}
    failures = {str(k): v for k, v in exs["graphs"].failures.items()}
    return {"rows": rows, "executor_stats": stats, "capture_failures": failures, "seconds": time.perf_counter() - t0,
            "episodes_of_trace": {f"{k[0]} | {k[1]}": c.stream.episodes for k, c in own.items() if c.gated}}


def attention_context(policy: Policy, name: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A context that runs the query under attention backend ``name`` (LLM and ViTs alike)."""

    @contextlib.contextmanager
    def ctx():
        llm, vit = policy.model.language_model, policy.model.vision_backbone
        fused = [m for m in vit.modules() if hasattr(m, "fused_attn")]
        if name == "eager":
            llm.set_attention("eager")
            for m in fused:
                m.fused_attn = False
        try:
            if name in ("flash", "efficient", "math"):
                from torch.nn.attention import SDPBackend, sdpa_kernel

                kind = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "math": SDPBackend.MATH}[name]
                with sdpa_kernel(kind):
                    yield
            else:
                yield
        finally:
            llm.set_attention("sdpa")
            for m in fused:
                m.fused_attn = True

    return ctx


def side_table(cfg: ProtocolConfig, policy: Policy, configs: list[Config], variants: dict[str, tuple],
               log) -> dict[str, Any]:
    """The ``side_cases`` under each variant (executor, context), interleaved; first-call time kept."""
    chosen = [c for c in configs if c.label in cfg.side_cases and not c.error]
    rows, tasks, first = [], {}, {}
    for vname, (ex, ctx) in variants.items():
        for c in map(copy.deepcopy, chosen):
            key = f"{c.label} | {vname}"
            t0 = time.perf_counter()
            try:  # first call: compiles / captures; a backend the GPU lacks fails here
                query(policy, c, ex, ctx)
                first[key] = 1e3 * (time.perf_counter() - t0)
                tasks[key] = lambda c=c, ex=ex, ctx=ctx: query(policy, c, ex, ctx)
            except Exception as e:  # noqa: BLE001 - reported next to the variant (e.g. no flash kernel on this GPU)
                rows.append({"config": c.label, "pruner": c.pruner, "variant": vname,
                             "error": f"{type(e).__name__}: {str(e)[:300]}"})
    log(f"[gpu-latency] side table: {len(tasks)} tasks x ({cfg.warmup} + {cfg.side_reps}) rounds")
    samples = L.interleave(tasks, cfg.side_reps, cfg.warmup) if tasks else {}
    pruners = {c.label: c.pruner for c in chosen}
    for key, s in samples.items():
        label, vname = key.split(" | ")
        rows.append({"config": label, "pruner": pruners[label], "variant": vname, "error": None,
                     "first_call_ms": first[key], **summarize_samples(s)})
    return {"rows": rows}


def memory_table(policy: Policy, configs: list[Config], ex: Executor) -> dict[str, Any]:
    """Peak CUDA memory one query adds (eager and graphs), and what the allocator holds in all
    (the graphs' private pools included)."""
    from vla_adp.bench.memory import cuda_query_memory

    rows = []
    for c in configs:
        if not c.error:
            rows.append({"config": c.label, "executor": "eager", **cuda_query_memory(lambda: query(policy, c, Executor()))})
            rows.append({"config": c.label, "executor": "graphs", **cuda_query_memory(lambda: query(policy, c, ex))})
    return {"rows": rows, "reserved_mib_end": torch.cuda.memory_reserved() / 2**20,
            "max_reserved_mib": torch.cuda.max_memory_reserved() / 2**20}


# -- roofline ----------------------------------------------------------------------------------
SCORERS = {"adp": "adp", "inverse": "inverse", "random": "random", "fastv": "fastv", "vla_pruner": "vla_pruner",
           "lightvla": "lightvla", None: "none"}


def floors(args, row: dict[str, Any], gpu: R.GPU, n_prompt: int) -> dict[str, float]:
    """Per-stage floors (ms) of a measured row at its measured per-layer lengths, averaged over its
    queries (a gated pruner's unpruned queries have no scoring and the full length)."""
    n = sum(count for _, count in row["seq_lens_counts"])
    out: dict[str, float] = {}
    for lens, count in row["seq_lens_counts"]:
        stages = R.oft_stages(args, n_prompt, seq_lens=lens, scorer=SCORERS.get(row["pruner"], "none"))
        for st in stages:
            key = "prune" if st.name == "scoring" else st.name
            out[key] = out.get(key, 0.0) + st.floor_ms(gpu) * count / n
    out["model"] = sum(out.values())
    return out


def add_floors(result: dict[str, Any], args, gpu: R.GPU, n_prompt: int) -> None:
    for name in ("main", "backends", "compile", "compile_graphs"):
        for row in result.get(name, {}).get("rows", []):
            if not row.get("error") and "seq_lens_counts" in row:
                row["floor_ms"] = floors(args, row, gpu, n_prompt)


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Budget:
    seconds: float
    scale: float = 1.0
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def run(cfg: ProtocolConfig, out_dir: str | Path, log=print) -> dict[str, Any]:
    """The whole protocol; ``latency.json`` and ``latency.md`` in ``out_dir`` are rewritten after every
    section, so a run stopped from outside keeps what it measured."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = Budget(cfg.budget_s, 0.1 if cfg.dry_run else 1.0)
    if torch.device(cfg.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {cfg.device} asked for, but torch sees no CUDA device")
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        policy = build_policy(cfg, Path(tmp))
        result: dict[str, Any] = {"config": asdict(cfg), "machine": _machine(cfg), "sections": {},
                                  "build_s": time.perf_counter() - t0}
        instruction = instruction_of_length(policy, cfg.n_prompt)
        configs = build_configs(cfg, policy, _images(policy), instruction)
        probe(policy, configs, Executor())
        n_prompt = len(policy.tokenizer.prompt_ids(instruction)) - 1
        result["shape"] = {"seq_len": policy.model.args.token_layout(n_prompt).length, "n_prompt": n_prompt,
                           "instruction": instruction, "llm": asdict(policy.model.args.llm),
                           "n_images": policy.model.args.n_images}
        for name, needs_s, fn in sections(cfg, policy, configs, budget, log):
            result[name] = _section(result, name, budget, needs_s, fn)
            write(result, policy.model.args, cfg, out_dir, budget)
    log(f"[gpu-latency] wrote {out_dir / 'latency.json'} and latency.md in {result['total_s']:.0f} s")
    return result


def sections(cfg: ProtocolConfig, policy: Policy, configs: list[Config], budget: "Budget", log):
    """(name, seconds it needs on an H100, function) of each section, in running order."""
    exs = executors(cfg)
    attention = {a: (exs["eager"], attention_context(policy, a)) for a in cfg.attention}
    yield "main", 0.0, lambda: main_table(cfg, policy, configs, log)
    yield "backends", 30.0, lambda: side_table(cfg, policy, configs, attention, log)
    if torch.device(cfg.device).type == "cuda":
        yield "memory", 20.0, lambda: memory_table(policy, configs, exs["graphs"])
    if cfg.compile:  # last: compile time is the least predictable; the later variant reuses the code
        backend = "eager" if cfg.dry_run else "inductor"
        capture = RerunCapture() if cfg.dry_run else None
        keys = cfg.compile_keys
        compiled = {"compile": (Executor(compile=True, compile_backend=backend, compile_keys=keys),
                                contextlib.nullcontext)}
        graphed = {"compile+graphs": (Executor(compile=True, graphs=True, compile_backend=backend, compile_keys=keys,
                                               capture=capture), contextlib.nullcontext)}
        yield "compile", 150.0, lambda: side_table(cfg, policy, configs, compiled, log)
        yield "compile_graphs", 40.0, lambda: side_table(cfg, policy, configs, graphed, log)


def write(result: dict[str, Any], args, cfg: ProtocolConfig, out_dir: Path, budget: "Budget") -> None:
    """Floors next to every measured row, then ``latency.json`` and ``latency.md``."""
    from vla_adp.bench.gpu_report import report

    gpu = R.get_gpu(cfg.gpu)
    n_prompt = result["shape"]["n_prompt"]
    result["roofline"] = {"gpu": asdict(gpu), "memory_bound_keep": R.memory_bound_keep(args, gpu, n_prompt),
                          "unpruned_floor_ms": R.total(R.oft_stages(args, n_prompt), gpu)}
    add_floors(result, args, gpu, n_prompt)
    result["total_s"] = time.perf_counter() - budget.start
    (out_dir / "latency.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "latency.md").write_text(report(result))


def _section(result: dict, name: str, budget: Budget, needs_s: float, fn: Callable[[], Any]) -> dict[str, Any]:
    """Run a section if the budget has ``needs_s`` left (a GPU estimate: the dry run scales it by
    ``budget.scale``); its wall time goes to ``result['sections']``; a failure is reported, not fatal."""
    needs_s *= budget.scale
    if budget.left() < needs_s:
        result["sections"][name] = 0.0
        return {"skipped": f"time budget: {budget.left():.0f} s left, the section needs about {needs_s:.0f} s"}
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - the sections before it are kept and the report says why
        import traceback

        out = {"skipped": f"failed: {type(e).__name__}: {str(e)[:300]}", "traceback": traceback.format_exc()}
    result["sections"][name] = time.perf_counter() - t0
    return out if isinstance(out, dict) else {"rows": out}


def _images(policy: Policy) -> list[np.ndarray]:
    """LIBERO-sized (256 px) frames: the Policy resizes them to the model's input, as in closed loop."""
    from vla_adp.bench.models import synthetic_images

    return synthetic_images(policy.model.args, size=256)


def _machine(cfg: ProtocolConfig) -> dict[str, Any]:
    import platform

    m = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
         "python": platform.python_version(), "device": cfg.device, "command": " ".join(sys.argv)}
    if torch.device(cfg.device).type == "cuda":
        p = torch.cuda.get_device_properties(torch.device(cfg.device))
        m |= {"gpu": p.name, "gpu_memory_gib": p.total_memory / 2**30, "sms": p.multi_processor_count,
              "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for latency.json and latency.md")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (what the test suite runs)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget (default 400 s on a GPU)")
    p.add_argument("--gpu", default=None, help=f"roofline GPU, one of {sorted(R.GPUS)} (default h100-sxm)")
    p.add_argument("--no-compile", action="store_true")
    a = p.parse_args(argv)
    over = {k: v for k, v in (("reps", a.reps), ("budget_s", a.budget_s), ("gpu", a.gpu)) if v is not None}
    if a.no_compile:
        over["compile"] = False
    try:
        cfg = ProtocolConfig.dry(**over) if a.dry_run else ProtocolConfig(**over)
        run(cfg, a.out, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as e:
        print(f"gpu_latency: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
