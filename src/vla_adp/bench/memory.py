"""Peak memory of one policy query, per configuration.

CPU: each configuration runs in a fresh interpreter (``python -m vla_adp.bench.memory SPEC``), because a process's peak resident set
only grows. The child builds the model, runs the warm-up queries of that one configuration, resets
the kernel's high-water mark (``/proc/self/clear_refs`` ← 5, Linux ≥ 4.0) so that building does not
count, runs the measured query, and reports ``VmHWM`` (peak RSS) minus the RSS before the first
query: the memory queries add on top of the weights — activations, kernel workspaces and what the
allocator kept from earlier queries (an unpruned warm-up query's peak can show through).
Where the mark cannot be reset, ``ru_maxrss`` is used and the result says so (it then includes
whatever building the model peaked at).

GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory allocated
before the query, in the benchmark process itself (UNTESTED HERE: no GPU on the project's machines).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from vla_adp.utils.machine import DTYPES


def rss_kib(field: str = "VmRSS") -> int | None:
    """A ``/proc/self/status`` memory field in KiB (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    from vla_adp.bench.models import build_model, synthetic_images, synthetic_inputs
    from vla_adp.bench.latency import QueryRunner, build_case

    torch.set_num_threads(spec["threads"])
    family = spec.get("family", "oft")
    model = build_model(spec["model"], DTYPES[spec["dtype"]], "cpu", spec["seed"], family=family)
    runner = QueryRunner(model, synthetic_inputs(model.args, n_prompt=spec["n_prompt"]), synthetic_images(model.args))
    case = build_case(spec["pruner"], spec["keep"], family=family)
    if case.error:
        return {"error": case.error}
    before = rss_kib()
    for _ in range(spec["queries"] - 1):  # warm-up: VLA-Pruner's first queries run unpruned
        runner.query(case.pruner)
    exact = reset_peak()  # the mark now starts at the current RSS, so the last query's peak is what it reads
    sample = runner.query(case.pruner)
    peak = rss_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"rss_before_mib": before / 1024, "peak_rss_mib": peak / 1024, "query_mib": (peak - before) / 1024,
            "pruned": sample.pruned, "kept_visual": sample.kept_visual,
            "method": "VmHWM reset before the last query" if exact else "ru_maxrss (includes model building)"}


def cpu_query_memory(spec: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """Peak memory of ``spec``'s configuration measured in a fresh interpreter (see module docstring).

    Args:
        spec: ``model``, ``family`` (default ``oft``), ``dtype``, ``seed``, ``n_prompt``, ``threads``, ``pruner`` (a spec; None =
            unpruned), ``keep``, ``queries`` (warm-up included; VLA-Pruner needs a few before it prunes).

    Returns:
        The measurement, or ``{"error": ...}`` (a failed probe is reported next to its configuration).
    """
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the vla_adp package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run([sys.executable, "-m", "vla_adp.bench.memory", json.dumps(spec)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"memory probe gave no answer within {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": f"memory probe failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def cuda_query_memory(run_query) -> dict[str, Any]:
    """Peak CUDA memory a query adds on top of what was allocated before it. UNTESTED HERE."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run_query()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"allocated_before_mib": before / 2**20, "peak_allocated_mib": peak / 2**20,
            "query_mib": (peak - before) / 2**20, "method": "torch.cuda.max_memory_allocated"}


if __name__ == "__main__":  # the child of cpu_query_memory: one JSON spec in, one JSON line out
    try:
        print(json.dumps(_measure(json.loads(sys.argv[1]))))
    except Exception as e:  # reported next to the configuration; the benchmark goes on
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}))
