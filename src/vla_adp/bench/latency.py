"""One clock for every pruner: per-stage latency of a policy query (docs/latency.md).

A query is timed stage by stage, with the sections the model and the policy already mark:

    transforms (resize, crop, normalise) ─ gate (pruner.begin) ─ vision ─ projector ─
    [prune (pruner's scoring + selection) ─ gather (shorter sequence)] ─ llm ─ head ─ gate (pruner.end)

and end to end (``e2e``, one clock around all of it). Discipline (docs/latency.md):
configurations run *interleaved* — round r runs every configuration once, in an order rotated by r —
so slow drifts of a shared machine hit all of them alike; warm-up rounds are dropped; results are
medians and p90 over the rounds; speedups are ratios of medians measured in the same run, next to the
per-round paired ratios (their p10–p90 is the noise band). ``clock="thread"`` counts the CPU time
of the (single) torch thread instead of wall time, for shared machines. The FLOPs prediction for the same
sequence lengths comes from :func:`vla_adp.cost.flops.llm_flops` (both conventions).

On a GPU, :class:`EventStopwatch` times the same sections with CUDA events (the GPU protocol on the
``Policy.infer`` path, with CUDA graphs and ``torch.compile``, is :mod:`vla_adp.bench.gpu_latency`;
docs/latency.md). **The GPU paths have not run on this project's machines yet (no GPU); the CPU path
never uses them.**
"""

from __future__ import annotations

import dataclasses
import json
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vla_adp.model import transforms as T
from vla_adp.model.openvla.openvla import OpenVLA, OpenVLAInputs
from vla_adp.model.openvla_oft import OFTInputs, OpenVLAOFT
from vla_adp.pruning.scoring import layer_text_vision_scores
from vla_adp.seam.context import LayerContext, Query
from vla_adp.seam.decoder import DecoderShape
from vla_adp.seam.flops import llm_flops
from vla_adp.seam.query import run_query
from vla_adp.utils.timing import Stopwatch, sync

STAGES = ("transforms", "gate", "vision", "projector", "prune", "gather", "llm", "head", "decode")  # decode: OpenVLA
OVERHEAD = ("gate", "prune", "gather")  # what a pruner adds on top of the shorter LLM pass
BASELINE = "none"


# -- statistics (pure) -------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Order statistics of one quantity over the measured rounds (ms or a ratio)."""

    n: int
    median: float
    p10: float
    p90: float
    min: float
    max: float

    @property
    def spread(self) -> float:
        """(p90 − p10) / median: the relative width of the middle 80 %."""
        return (self.p90 - self.p10) / self.median if self.median else float("nan")


def summarize(samples: Sequence[float]) -> Summary:
    """Median, p10/p90 (linear interpolation) and range of ``samples``."""
    if len(samples) == 0:
        raise ValueError("cannot summarise an empty list of samples")
    x = np.asarray(samples, dtype=np.float64)
    p10, med, p90 = np.percentile(x, [10, 50, 90])
    return Summary(len(x), float(med), float(p10), float(p90), float(x.min()), float(x.max()))


def paired_ratios(base: Sequence[float], other: Sequence[float]) -> list[float]:
    """base[r] / other[r] per round r (both measured in the same interleaved round)."""
    if len(base) != len(other):
        raise ValueError(f"paired ratios need equal rounds, got {len(base)} and {len(other)}")
    return [b / o for b, o in zip(base, other) if o > 0]


def expected_latency(t_full: float, t_pruned: float, gamma: float, t_gate: float = 0.0) -> float:
    """Mean per-query latency when a share γ of the queries prunes (the latency twin of Eq. 24).

    Unpruned queries of a gated pruner still pay its gate (``t_gate``).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma (share of pruned queries) must be in [0, 1], got {gamma!r}")
    return gamma * t_pruned + (1.0 - gamma) * (t_full + t_gate)


def expected_speedup(t_full: float, t_pruned: float, gamma: float, t_gate: float = 0.0) -> float:
    """Unpruned latency over :func:`expected_latency` (per query, hence per episode)."""
    return t_full / expected_latency(t_full, t_pruned, gamma, t_gate)


# -- stopwatches -------------------------------------------------------------------------------
class EventStopwatch:
    """CUDA-event sections with the :class:`~vla_adp.utils.timing.Stopwatch` interface.

    Records a start/end event pair per section and synchronises once, in :meth:`ms`, so the timer
    does not stall the stream between stages. Not yet run: no GPU on the project's machines.
    """

    def __init__(self, device=None):
        self.pairs: dict[str, list[tuple[Any, Any]]] = defaultdict(list)

    @contextmanager
    def __call__(self, name: str):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        try:
            yield
        finally:
            end.record()
            self.pairs[name].append((start, end))

    def ms(self) -> dict[str, float]:
        torch.cuda.synchronize()
        return {k: sum(s.elapsed_time(e) for s, e in v) for k, v in self.pairs.items()}


CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


class ThreadTimeStopwatch(Stopwatch):
    """CPU time of the calling thread per section (``--clock thread``).

    With one torch thread every kernel runs on the calling thread, so this counts the work the query
    did and not the time other processes held the core: far steadier on a shared machine, but not a
    latency (it misses waiting, e.g. for memory bandwidth another process takes). CPU only.
    """

    @contextmanager
    def __call__(self, name: str):
        t0 = time.thread_time()
        try:
            yield
        finally:
            self.seconds[name] += time.thread_time() - t0


def make_timer(device: torch.device, clock: str = "wall"):
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {tuple(CLOCKS)}, got {clock!r}")
    if device.type == "cuda":
        if clock != "wall":
            raise ValueError("the thread clock is for the CPU protocol; on a GPU use the wall clock (CUDA events)")
        return EventStopwatch(device)
    return ThreadTimeStopwatch(device) if clock == "thread" else Stopwatch(device)


# -- one query ---------------------------------------------------------------------------------
@dataclass
class Case:
    """One configuration of the benchmark: no pruner (``none``) or a pruner at a keep ratio."""

    label: str
    pruner_name: str | None = None
    keep: float | None = None
    pruner: Any = None
    error: str | None = None  # why the pruner could not be built (reported, not raised)
    spec: str | None = None  # the ``name[:field=value,...]`` it was built from


@dataclass
class QuerySample:
    ms: dict[str, float]
    seq_lens: list[int]
    kept_visual: int
    pruned: bool


# Every query of a gated pruner (ADP, random, inverse) prunes, so that the pruned shape is timed.
FORCE_PRUNED = {"gate": {"schedule": "static", "limit_consecutive": False}}
# Layer indices set for the 32-layer 7B, scaled to a shallower benchmark decoder (field: least value),
# so that the share of layers before the cut stays about the 7B's.
REF_LAYERS = 32
DEPTH_FIELDS: dict[str, dict[str, int]] = {"fastv": {"layer": 1}, "vla_pruner": {"fastv_k": 0, "action_layer": 1},
                                            "vla_pruner_openvla": {"layer": 1, "action_layer": 1},
                                            "vla_cache": {"reuse_layers": 1, "relevance_layer": 0},
                                            "sparsevlm": {"layers": 0}}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:field=value,field=value`` (values read as JSON where they parse)."""
    name, _, rest = spec.partition(":")
    fields: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"pruner spec {spec!r}: expected name:field=value[,field=value], got {item!r}")
        try:
            fields[key] = json.loads(value)
        except json.JSONDecodeError:
            fields[key] = value
    return name, fields


def depth_fields(name: str, n_layers: int | None, given: dict[str, Any], config_cls=None) -> dict[str, int]:
    """The pruner's 7B layer indices scaled to ``n_layers`` (those the user did not set).

    Args:
        name: the pruner's ``name`` (a family's variant has its own: ``vla_pruner_openvla``).
        config_cls: its config class (default: the registry's for ``name``).
    """
    if not n_layers or n_layers == REF_LAYERS:
        return {}
    from vla_adp.pruning.registry import config_class

    defaults = {f.name: f.default for f in dataclasses.fields(config_cls or config_class(name))}

    def scale(v: int, least: int) -> int:
        return max(least, min(n_layers - 1, round(v * n_layers / REF_LAYERS)))

    # A tuple of layers (SparseVLM's stages, VLA-Cache's reuse layers) scales element-wise, merged where equal.
    return {f: tuple(sorted({scale(v, least) for v in defaults[f]})) if isinstance(defaults[f], tuple)
            else scale(defaults[f], least)
            for f, least in DEPTH_FIELDS.get(name, {}).items() if f not in given}


def keep_free(name: str) -> bool:
    """Whether the pruner's kept count ignores the keep ratio (LightVLA: ``keep_ratio`` defaults to None)."""
    from vla_adp.pruning.registry import config_class

    return any(f.name == "keep_ratio" and f.default is None for f in dataclasses.fields(config_class(name)))


def build_case(spec: str | None, keep: float | None = None, n_layers: int | None = None,
               family: str = "oft") -> Case:
    """A benchmark configuration; a pruner that cannot be built is kept with the reason as ``error``.

    Args:
        spec: ``name[:field=value,...]`` or None / ``none`` for the unpruned query.
        n_layers: the benchmark decoder's depth, for :func:`depth_fields`.
        family: the model family (:data:`vla_adp.families.FAMILIES`); it builds the pruner (its variant
            of the method, or a refusal reported as the case's error).
    """
    if spec in (None, BASELINE):
        return Case(BASELINE)
    from vla_adp.families import get_family
    from vla_adp.pruning.registry import config_class

    name, fields = parse_spec(spec)
    build = get_family(family).build_pruner
    tag = f"@{keep:g}" if keep is not None else ""
    try:
        variant = build(name)  # the family's variant with its defaults: its name, config fields and depths
    except (ImportError, TypeError, ValueError) as e:  # not on this branch yet, or the family refuses the method
        return Case(spec + tag, name, keep, error=f"{type(e).__name__}: {e}", spec=spec)
    try:
        fields = {**depth_fields(variant.name, n_layers, fields, type(variant.config)), **fields}
        label = name + (":" + ",".join(f"{k}={v}" for k, v in fields.items()) if fields else "")
        label += tag
        forced = FORCE_PRUNED if any(f.name == "gate" for f in dataclasses.fields(config_class(name))) else {}
        pruner = build(name, keep_ratio=keep, **{**forced, **fields})
    except (ImportError, TypeError) as e:  # no keep_ratio field
        return Case(spec + tag, name, keep, error=f"{type(e).__name__}: {e}", spec=spec)
    return Case(label, name, keep, pruner, spec=label.rsplit("@", 1)[0])


def build_cases(specs: list[str], keeps: list[float], n_layers: int | None = None, family: str = "oft") -> list[Case]:
    """The unpruned case, then every spec at every keep ratio (once, keep None, if it ignores keep)."""
    cases = [build_case(None)]
    for spec in specs:
        try:
            free = keep_free(parse_spec(spec)[0])
        except ImportError:
            free = False  # build_case reports the import error
        cases += [build_case(spec, k, n_layers, family) for k in ([None] if free else keeps)]
    return cases


def probe_cases(cases: list[Case], runner: "QueryRunner") -> None:
    """Run each case once (a warm-up query); one that fails at run time is reported, not fatal.

    E.g. FastV asked to cut after a layer a shallow benchmark decoder does not have.
    """
    for case in cases:
        if case.error is None:
            try:
                runner.query(case.pruner)
            except (ValueError, RuntimeError, IndexError) as e:
                case.error = f"{type(e).__name__}: {e}"


class QueryRunner:
    """Runs timed queries of one model on one fixed observation, for any pruner."""

    def __init__(self, model: OpenVLAOFT | OpenVLA, inputs: OFTInputs | OpenVLAInputs, images: list[np.ndarray],
                 clock: str = "wall"):
        self.model, self.inputs, self.images = model, inputs, images
        self.clock = clock
        make_timer(model.device, clock)  # fail early on a bad clock/device pair
        self.layout = model.layout(inputs)
        # Queries each live pruner instance has seen (one long episode); weak keys, not id(): a later
        # pruner could reuse a dead one's id and start mid-episode. The unpruned query counts on its own.
        self.episode_step: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._unpruned_step = 0
        # The frames the model sees (resized, cropped): the same every query, VLA-Cache's best case.
        self.frames = tuple(T.policy_image(img, model.args.image_size) for img in images)
        self._ctx: LayerContext | None = None

    @torch.inference_mode()
    def query(self, pruner=None) -> QuerySample:
        """One query through transforms, gate, model and the pruner's end-of-query update."""
        dev, clock = self.model.device, CLOCKS[self.clock]
        timer = make_timer(dev, self.clock)
        sync(dev)
        t0 = clock()
        with timer("transforms"):
            a = self.model.args
            pixels = T.pixel_batch([T.policy_image(img, a.image_size) for img in self.images], a.towers).to(dev)
        inputs = dataclasses.replace(self.inputs, pixels=pixels)
        r = run_query(self.model, inputs, pruner, self._query(pruner), timer=timer)
        out, actions = r.output, r.actions
        sync(dev)
        e2e = 1e3 * (clock() - t0)
        if not np.isfinite(actions).all():
            raise RuntimeError("the benchmark model produced non-finite actions")
        ms = {s: 0.0 for s in STAGES} | timer.ms() | {"e2e": e2e}
        return QuerySample(ms, list(out.seq_lens), out.layout.n_visual, bool(out.keep_sets))

    def _query(self, pruner) -> Query:
        """The pruner's next query of its episode, with a steadily moving end effector."""
        if pruner is None:
            index, self._unpruned_step = self._unpruned_step, self._unpruned_step + 1
        else:
            index = self.episode_step.get(pruner, 0)
            self.episode_step[pruner] = index + 1
        pos = np.array([0.01 * index, 0.0, 0.0])
        return Query(index, self.layout, eef_pos=pos, eef_rotvec=np.zeros(3), images=self.frames)

    @torch.inference_mode()
    def scoring(self, method: str = "fused") -> dict[str, float]:
        """ADP's layer-0 text→vision score Φ alone (Eq. 7–9), on the embedded sequence."""
        ctx = self._layer0()
        timer = make_timer(self.model.device, self.clock)
        with timer("phi"):
            phi = layer_text_vision_scores(ctx, method)
        if phi.shape[-1] != self.layout.n_visual:
            raise RuntimeError(f"scorer returned {phi.shape[-1]} scores for {self.layout.n_visual} visual tokens")
        return timer.ms()

    def _layer0(self) -> LayerContext:
        if self._ctx is None:  # the embedded query, once: Φ is timed on it alone
            emb = self.model.embed(self.inputs)
            self._ctx = LayerContext(0, emb.hidden, emb.position_ids, emb.layout, emb.visual, self.model.language_model)
        return self._ctx


# -- interleaved rounds ------------------------------------------------------------------------
def interleave(tasks: dict[str, Callable[[], Any]], reps: int, warmup: int,
               progress: Callable[[int, int], None] | None = None) -> dict[str, list[Any]]:
    """Round r runs every task once, in an order rotated by r; the first ``warmup`` rounds are dropped."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"need reps >= 1 and warmup >= 0, got reps={reps!r}, warmup={warmup!r}")
    names = list(tasks)
    kept: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(warmup + reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sample = tasks[name]()
            if r >= warmup:
                kept[name].append(sample)
        if progress is not None:
            progress(r + 1, warmup + reps)
    return kept


# -- results -----------------------------------------------------------------------------------
@dataclass
class CaseResult:
    """Everything measured for one configuration; ``samples`` keeps the raw per-round ms."""

    label: str
    pruner: str | None
    keep: float | None
    error: str | None = None
    pruned_share: float = 0.0
    kept_visual: Summary | None = None
    seq_lens: list[int] = field(default_factory=list)
    flops: dict[str, float] = field(default_factory=dict)
    stages: dict[str, Summary] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, Any] | None = None


def case_result(case: Case, samples: list[QuerySample], shape: DecoderShape) -> CaseResult:
    """Summaries of one case's rounds; FLOPs are the median over rounds (data-dependent pruners vary)."""
    if case.error or not samples:
        return CaseResult(case.label, case.pruner_name, case.keep, error=case.error or "no samples")
    per_stage = {k: [s.ms.get(k, 0.0) for s in samples] for k in (*STAGES, "e2e")}
    per_stage["overhead"] = [sum(s.ms.get(k, 0.0) for k in OVERHEAD) for s in samples]
    flops = {c: float(np.median([llm_flops(shape, s.seq_lens, c) for s in samples]))
             for c in ("paper", "consistent")}
    mid = samples[len(samples) // 2]
    return CaseResult(case.label, case.pruner_name, case.keep, None,
                      pruned_share=float(np.mean([s.pruned for s in samples])),
                      kept_visual=summarize([s.kept_visual for s in samples]), seq_lens=mid.seq_lens, flops=flops,
                      stages={k: summarize(v) for k, v in per_stage.items()}, samples=per_stage)


def speedups(base: CaseResult, row: CaseResult) -> dict[str, float]:
    """Measured speedups of ``row`` over the unpruned ``base`` next to the FLOPs-predicted ones.

    ``llm``: decoder only; ``llm+overhead``: decoder plus the pruner's gate, scoring, selection and
    gather; ``e2e``: the whole query. ``realised`` = measured LLM speedup / predicted (consistent
    convention: every matmul at 2 FLOPs per MAC, the cost the hardware actually pays).
    """
    med = lambda r, k: r.stages[k].median  # noqa: E731
    llm_pair = summarize(paired_ratios(base.samples["llm"], row.samples["llm"]))
    pred = {c: base.flops[c] / row.flops[c] for c in ("paper", "consistent")}
    llm_total = lambda r: np.add(r.samples["llm"], r.samples["overhead"])  # noqa: E731
    return {
        "llm": med(base, "llm") / med(row, "llm"),
        "llm_paired_p10": llm_pair.p10, "llm_paired_p90": llm_pair.p90,
        "predicted_consistent": pred["consistent"], "predicted_paper": pred["paper"],
        "realised": (med(base, "llm") / med(row, "llm")) / pred["consistent"],
        "llm+overhead": med(base, "llm") / float(np.median(llm_total(row))),
        "e2e": med(base, "e2e") / med(row, "e2e"),
        "overhead_pct_of_unpruned_e2e": 100 * med(row, "overhead") / med(base, "e2e"),
    }
