"""Bounded load test of ``vla-adp serve``: latency percentiles seen by robots and by the server.

Starts ``vla-adp serve`` on a free loopback port in a subprocess (or a thread with ``--in-process``,
or targets ``--url``), a fresh one per load level, then runs
``--clients`` robots at once, each a :class:`~vla_adp.serve.client.RemotePolicy` session doing
``--queries`` queries after a warm-up query. Prints client-side p50/p90/p99 (HTTP + json-numpy +
queueing + model), the server's ``/metrics`` and, for reference, the same queries on the local
policy without HTTP. Default checkpoint: a tiny random one made on the fly.

    PYTHONPATH=src python benchmarks/server_load.py --clients 1 4 --queries 20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import torch

from vla_adp.model.tiny import make_tiny_checkpoint
from vla_adp.policy import Policy
from vla_adp.pruning.registry import build_pruner
from vla_adp.serve.client import RemotePolicy
from vla_adp.serve.metrics import percentiles
from vla_adp.serve.server import BackgroundServer, create_app


def observation(seed: int, size: int, n_images: int, proprio_dim: int) -> dict:
    rng = np.random.default_rng(seed)
    obs = {"full_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
           "state": rng.normal(size=proprio_dim), "instruction": "pick up the black bowl and place it on the plate"}
    for i in range(1, n_images):
        obs[f"wrist_image{'' if i == 1 else i}"] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return obs


def run_clients(url: str, n_clients: int, n_queries: int, obs: list[dict]) -> tuple[list[float], float]:
    """Each client: reset, one warm-up query, then ``n_queries`` timed ones; all start together."""
    latencies: list[float] = []
    barrier = threading.Barrier(n_clients + 1)

    def robot(i: int) -> None:
        with RemotePolicy(url, session_id=f"bench-{i}") as remote:
            remote.reset()
            remote.infer(obs[0])
            barrier.wait()
            for q in range(n_queries):
                t0 = time.perf_counter()
                remote.infer(obs[q % len(obs)])
                latencies.append(1e3 * (time.perf_counter() - t0))

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def local_ms(policy: Policy, obs: list[dict], n: int) -> list[float]:
    session = policy.new_session()
    policy.infer(obs[0], session)
    out = []
    for q in range(n):
        t0 = time.perf_counter()
        policy.infer(obs[q % len(obs)], session)
        out.append(1e3 * (time.perf_counter() - t0))
    return out


@contextlib.contextmanager
def serving(args, ckpt, policy: Policy):
    """``--url``, a server thread in this process (``--in-process``), or ``vla-adp serve`` in a subprocess."""
    if args.url:
        yield args.url
    elif args.in_process:
        with BackgroundServer(create_app(policy)) as server:
            yield server.url
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "vla_adp", "serve", "--checkpoint", str(ckpt), "--port", str(port),
               "--dtype", "fp32", "--device", args.device, "--log-level", "warning"]
        if args.pruner:
            cmd += ["--pruner", args.pruner] + (["--keep", str(args.keep)] if args.keep is not None else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        try:
            yield wait_healthy(f"http://127.0.0.1:{port}", proc)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)


def wait_healthy(url: str, proc, timeout: float = 300.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return url
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError(f"no server on {url} after {timeout:.0f} s")


def fmt(p: dict) -> str:
    return " / ".join(f"{p[k]:.1f}" for k in ("p50", "p90", "p99"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="checkpoint folder (default: a tiny random one)")
    ap.add_argument("--url", default=None, help="an already running server (default: start one here)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--queries", type=int, default=20, help="timed queries per client")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pruner", default=None, help="e.g. adp (default: no pruning)")
    ap.add_argument("--keep", type=float, default=None, help="keep ratio for --pruner")
    ap.add_argument("--in-process", action="store_true",
                    help="serve from a thread of this process (shares the GIL with the clients)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_tiny_checkpoint(f"{tmp}/openvla-7b-oft-finetuned-libero-spatial")
        pruner = build_pruner(args.pruner, keep_ratio=args.keep) if args.pruner else None
        policy = Policy.load(ckpt, pruner=pruner, dtype=torch.float32, device=args.device)
        a = policy.model.args
        obs = [observation(s, a.image_size, a.n_images, policy.platform.proprio_dim) for s in range(8)]
        where = args.url or ("server thread in this process" if args.in_process else "server subprocess")
        print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"torch threads {args.threads}, device {args.device}; checkpoint "
              f"{'tiny random' if not args.checkpoint else ckpt}; pruner {args.pruner or 'none'}; {where}")
        print(f"local policy (no HTTP), p50/p90/p99 ms: {fmt(percentiles(local_ms(policy, obs, args.queries)))}")
        print("| clients | queries | q/s | client p50/p90/p99 ms | server p50/p90/p99 ms | model p50 ms | pruned |")
        print("|---|---|---|---|---|---|---|")
        for n in args.clients:
            print(row(n, args, ckpt, policy, obs))


def row(n: int, args, ckpt, policy: Policy, obs: list[dict]) -> str:
    """One load level on a fresh server (its metrics then cover this run and its warm-up queries)."""
    with serving(args, ckpt, policy) as url:
        lat, wall = run_clients(url, n, args.queries, obs)
        with RemotePolicy(url) as probe:
            m = probe.metrics()
    return (f"| {n} | {len(lat)} | {len(lat) / wall:.1f} | {fmt(percentiles(lat))} | "
            f"{fmt(m['latency_ms'])} | {m['model_ms']['p50']:.1f} | {m['pruned_share']:.2f} |")


if __name__ == "__main__":
    main()
