"""The decoder of a fixed sequence-length profile replayed as one CUDA graph (issue 7, GPU protocol).

Pruned and unpruned queries have fixed shapes per keep ratio, so each gets its own graph; replaying
removes the per-kernel launch overhead that eager PyTorch pays and shows what the shapes cost on
the GPU itself. **UNTESTED HERE: the project's machines have no GPU**; on the CPU it refuses.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vla_adp.cost.latency import Summary, summarize


def graphed_decoder_ms(llm, seq_lens: list[int], reps: int = 50, warmup: int = 5) -> Summary:
    """Latency of the decoder replayed as one CUDA graph for a fixed per-layer length profile.

    The graph runs each run of equal lengths as ``run_layers`` and cuts the sequence to the next
    length in between (the gather's shape effect), so pruned and unpruned shapes each get their own
    graph. Needs a CUDA model; not exercised on the project's CPU machines.
    """
    dev, dtype = llm.norm.weight.device, llm.norm.weight.dtype
    if dev.type != "cuda":
        raise ValueError("CUDA graphs need the model on a CUDA device (--device cuda)")
    x = torch.randn(1, seq_lens[0], llm.args.dim, device=dev, dtype=dtype)
    segments = _segments(seq_lens)

    def step():
        h = x
        for start, stop, length in segments:
            h = h[:, :length]
            pos = torch.arange(length, device=dev)[None]
            h = llm.run_layers(h, pos, start, stop)
        return h

    graph = _capture(step, warmup)
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
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


def _capture(fn: Callable[[], torch.Tensor], warmup: int):
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(side):
        for _ in range(warmup):  # kernels and allocator settle before capture, as PyTorch requires
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        fn()
    return graph
