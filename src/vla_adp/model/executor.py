"""How the model's fixed-shape blocks run: eagerly, replayed as CUDA graphs, or through ``torch.compile``.

At batch 1 a 7B query launches thousands of small kernels (two ViTs × two views, 32 decoder layers,
the head); on a GPU the launch overhead alone can cost as much as the arithmetic. Every block whose
input shapes are fixed for a given query shape goes through one designed hook,
``executor.run(key, fn, *tensors)``, called by :class:`~vla_adp.model.openvla_oft.OpenVLAOFT`:

    pixels ─► run("vision") ─► run("projector") ─► [pruner: eager] ─► run(("llm", start, stop)) ─► run("head")

* :class:`Executor` ``()``: calls ``fn`` (the default; what every test and the CPU path use).
* ``Executor(graphs=True)``: the first call of a key with given input shapes captures ``fn`` as a CUDA
  graph on static input buffers; later calls copy the inputs in, replay, and return a copy of the
  output. A pruned decoder segment has one shape per kept length, so each kept-length bucket gets its
  own graph (``bucket`` > 1 rounds lengths up and masks the padding keys, so data-dependent counts such
  as LightVLA's share graphs; exact-length graphs keep flash attention, which a key mask rules out).
* ``Executor(compile=True)``: ``torch.compile`` per key (shapes static); with ``graphs=True`` the
  compiled code is what gets captured (the "reduce-overhead" idea, with our own graph cache).

The pruner's scoring, selection and gather stay eager: their control flow depends on the data.
The Policy holds one executor (:meth:`vla_adp.policy.Policy.set_executor`), so the path users call is
the path that is timed (docs/latency.md). Capture is pluggable: :class:`RerunCapture` re-runs ``fn`` on
the static buffers instead of replaying a graph, so the whole bookkeeping (keys, buffers, buckets,
copies) runs and is tested on a CPU; :class:`CudaGraphCapture` is the only GPU-specific part.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Replay = Callable[[], Any]


class CudaGraphCapture:
    """``torch.cuda.CUDAGraph`` capture after ``warmup`` runs on a side stream (as PyTorch requires)."""

    def __init__(self, warmup: int = 3):
        self.warmup = warmup

    def __call__(self, fn: Callable[..., Any], static: tuple) -> tuple[Replay, Any]:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # kernels chosen, allocator settled, compiled code built
                fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(*static)
        return graph.replay, out


class RerunCapture:
    """Stands in for a CUDA graph on a CPU: "replay" re-runs ``fn`` on the static inputs and writes the
    result into the static outputs, exactly where a graph replay would leave it."""

    def __call__(self, fn: Callable[..., Any], static: tuple) -> tuple[Replay, Any]:
        out = fn(*static)

        def replay() -> None:
            _copy_into(out, fn(*static))

        return replay, out


@dataclass
class _Graph:
    replay: Replay
    inputs: tuple
    output: Any


@dataclass
class Executor:
    """Runs the model's fixed-shape blocks (see the module docstring).

    Args:
        graphs: capture each (key, input shapes) once and replay it.
        compile: ``torch.compile`` each key's function (``compile_backend``: ``inductor`` on a GPU;
            ``eager`` only traces, for checks on a CPU).
        compile_keys: compile only these blocks (``vision``, ``projector``, ``llm``, ``head``); None =
            all. Inductor compiles the two ViTs × two views as one unrolled graph, which takes minutes.
        bucket: decoder segments: round sequence lengths up to a multiple of this and mask the padding
            keys (1 = exact lengths, one graph per kept length).
        max_graphs: captured graphs kept at most; further shapes run uncaptured and are counted.
            A block whose capture fails (``RuntimeError``) also runs uncaptured from then on; the
            error is kept in ``failures`` (reported by the GPU protocol).
        capture: how a graph is captured; default :class:`CudaGraphCapture`.
    """

    graphs: bool = False
    compile: bool = False
    bucket: int = 1
    max_graphs: int = 64
    compile_backend: str = "inductor"
    compile_keys: tuple[str, ...] | None = None
    capture: Callable[[Callable[..., Any], tuple], tuple[Replay, Any]] | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"captures": 0, "replays": 0, "uncaptured": 0})
    failures: dict[Hashable, str] = field(default_factory=dict)
    _graphs: dict[Hashable, _Graph] = field(default_factory=dict, repr=False)
    _compiled: dict[Hashable, Callable] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.bucket, int) or self.bucket < 1:
            raise ValueError(f"Executor.bucket must be an int >= 1, got {self.bucket!r}")
        if not isinstance(self.max_graphs, int) or self.max_graphs < 0:
            raise ValueError(f"Executor.max_graphs must be an int >= 0, got {self.max_graphs!r}")

    @property
    def name(self) -> str:
        return "+".join(n for n, on in (("compile", self.compile), ("graphs", self.graphs)) if on) or "eager"

    def reset(self) -> None:
        """Drop captured graphs and compiled functions (e.g. after changing the attention backend)."""
        self._graphs.clear()
        self._compiled.clear()

    def run(self, key: Hashable, fn: Callable[..., Any], *tensors: Tensor | None) -> Any:
        """``fn(*tensors)``, compiled and/or replayed from a graph keyed by ``key`` and the input shapes."""
        if self.compile and (self.compile_keys is None or _block(key) in self.compile_keys):
            compiled = self._compiled.get(key)
            fn = self._compile(key, fn) if compiled is None else compiled
        if not self.graphs:
            return fn(*tensors)
        full_key = (key, *(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors))
        graph = self._graphs.get(full_key)
        if graph is None:
            if len(self._graphs) >= self.max_graphs or full_key in self.failures:
                self.stats["uncaptured"] += 1
                return fn(*tensors)
            try:
                graph = self._graphs[full_key] = self._capture(fn, tensors)
            except RuntimeError as e:  # a block that cannot be captured runs eagerly; the failure is kept
                self.failures[full_key] = f"{type(e).__name__}: {str(e)[:300]}"
                self.stats["uncaptured"] += 1
                return fn(*tensors)
        else:
            for static, t in zip(graph.inputs, tensors):
                if t is not None:
                    static.copy_(t)
            graph.replay()
            self.stats["replays"] += 1
        return _clone(graph.output)

    def run_layers(self, llm, x: Tensor, pos: Tensor, start: int, stop: int, mask: Tensor | None,
                   taps: dict | None = None) -> Tensor:
        """Decoder layers ``[start, stop)`` (:meth:`~vla_adp.model.llm.LlamaDecoder.run_layers`) through
        :meth:`run`, padded to the length bucket when ``bucket`` > 1 (padding keys masked out).

        A segment with an attention tap (``taps``, VLA-Cache) runs eagerly: a tap is Python with
        data-dependent shapes that a captured graph would not call again.
        """
        if start == stop:
            return x
        if taps and any(start <= i < stop for i in taps):
            return llm.run_layers(x, pos, start, stop, mask, taps)
        fn = lambda x, pos, mask: llm.run_layers(x, pos, start, stop, mask)  # noqa: E731
        n = x.shape[1]
        padded = -(-n // self.bucket) * self.bucket
        if not self.graphs or padded == n:
            return self.run(("llm", start, stop), fn, x, pos, mask)
        x, pos, mask = pad_sequence(x, pos, mask, padded)
        return self.run(("llm", start, stop), fn, x, pos, mask)[:, :n]

    def _compile(self, key: Hashable, fn: Callable) -> Callable:
        compiled = torch.compile(fn, dynamic=False, backend=self.compile_backend)
        self._compiled[key] = compiled
        return compiled

    def _capture(self, fn: Callable, tensors: tuple) -> _Graph:
        if self.capture is None and any(t is not None and t.device.type != "cuda" for t in tensors):
            raise ValueError("CUDA graphs need the model on a CUDA device; on a CPU use Executor() "
                             "(or capture=RerunCapture() to check the bookkeeping)")
        static = tuple(None if t is None else t.clone() for t in tensors)
        replay, out = (self.capture or CudaGraphCapture())(fn, static)
        self.stats["captures"] += 1
        return _Graph(replay, static, out)


EAGER = Executor()


def pad_sequence(x: Tensor, pos: Tensor, mask: Tensor | None, length: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-pad (B, S, D) hidden states and (B, S) positions to ``length``; the key mask hides the pads.

    Attention is bidirectional, so the real tokens' outputs are exactly those of the unpadded sequence
    as long as no real query attends to a pad key; the pads' own outputs are dropped by the caller.
    """
    b, n, d = x.shape
    extra = length - n
    if extra < 0:
        raise ValueError(f"cannot pad a sequence of {n} tokens to {length}")
    keys = torch.ones(b, n, dtype=torch.bool, device=x.device) if mask is None else mask
    x = torch.cat([x, x.new_zeros(b, extra, d)], dim=1)
    pos = torch.cat([pos, pos.new_zeros(b, extra)], dim=1)
    keys = torch.cat([keys, keys.new_zeros(b, extra)], dim=1)
    return x, pos, keys


def _block(key: Hashable) -> Hashable:
    """``vision`` of "vision", ``llm`` of ("llm", start, stop)."""
    return key[0] if isinstance(key, tuple) else key


def _clone(out: Any) -> Any:
    """A copy of a graph's static output: the next replay overwrites the static one."""
    if isinstance(out, Tensor):
        return out.clone()
    return type(out)(_clone(o) for o in out)


def _copy_into(static: Any, fresh: Any) -> None:
    if isinstance(static, Tensor):
        static.copy_(fresh)
        return
    for s, f in zip(static, fresh):
        _copy_into(s, f)
