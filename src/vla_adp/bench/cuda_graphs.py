"""The decoder of a fixed sequence-length profile replayed as CUDA graphs (``vla-adp bench --cuda-graphs``).

A thin use of :class:`vla_adp.model.executor.Executor` — the same graph cache ``Policy.infer`` uses
— on the decoder alone: each run of layers at one length (the gather's shape effect) is one
captured segment, so pruned and unpruned shapes each get their own graphs. The full per-stage GPU
protocol on the policy path is :mod:`vla_adp.bench.gpu_latency`. On a CPU it refuses.
"""

from __future__ import annotations

import torch

from vla_adp.bench.latency import Summary, summarize
from vla_adp.model.executor import CudaGraphCapture, Executor


def graphed_decoder_ms(llm, seq_lens: list[int], reps: int = 50, warmup: int = 5) -> Summary:
    """Latency (CUDA events) of the decoder replayed from graphs for a fixed per-layer length profile."""
    dev, dtype = llm.norm.weight.device, llm.norm.weight.dtype
    if dev.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device (--device cuda)")
    ex = Executor(graphs=True, capture=CudaGraphCapture(warmup))
    x = torch.randn(1, seq_lens[0], llm.args.dim, device=dev, dtype=dtype)

    def step():
        h = x
        for start, stop, length in _segments(seq_lens):
            h = h[:, :length]
            h = ex.run_layers(llm, h, torch.arange(length, device=dev)[None], start, stop, None)
        return h

    times = []
    with torch.inference_mode():
        step()  # captures every segment
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            step()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
    return summarize(times)


def _segments(seq_lens: list[int]) -> list[tuple[int, int, int]]:
    """[(start, stop, length)] runs of layers with one sequence length."""
    out, start = [], 0
    for i in range(1, len(seq_lens) + 1):
        if i == len(seq_lens) or seq_lens[i] != seq_lens[start]:
            out.append((start, i, seq_lens[start]))
            start = i
    return out
