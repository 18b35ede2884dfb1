"""Server metrics for ``GET /metrics``: latency percentiles, kept visual tokens, share of pruned queries.

Latencies cover the last ``window`` queries: ``latency_ms`` is the server's time per ``/act`` request
from reaching the endpoint to the response being ready (body upload, parsing, validation, waiting
for the model, inference); ``model_ms`` is the policy's own ``timing_ms.total``. Counts are since start.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any, Iterable

import numpy as np

PERCENTILES = (50, 90, 99)


def percentiles(values: Iterable[float], qs: tuple[int, ...] = PERCENTILES) -> dict[str, float | None]:
    """``{"p50": ..., "p90": ..., "p99": ...}`` (linear interpolation); ``None`` when there is no data."""
    v = np.asarray(list(values), np.float64)
    return {f"p{q}": (float(np.percentile(v, q)) if v.size else None) for q in qs}


class Metrics:
    """Thread-safe accumulator of per-query numbers."""

    def __init__(self, window: int = 1000):
        self.lock = threading.Lock()
        self.latency = deque(maxlen=window)
        self.model = deque(maxlen=window)
        self.kept = deque(maxlen=window)
        self.queries = 0
        self.pruned = 0
        self.kept_sum = 0
        self.n_visual = 0
        self.errors: Counter[int] = Counter()

    def query(self, latency_ms: float, info: dict[str, Any]) -> None:
        """Record one answered ``/act``."""
        with self.lock:
            self.queries += 1
            self.pruned += bool(info.get("pruned"))
            kept = int(info.get("kept_visual", 0))
            self.kept_sum += kept
            self.n_visual = int(info.get("n_visual", self.n_visual))
            self.latency.append(latency_ms)
            self.model.append(float(info.get("timing_ms", {}).get("total", float("nan"))))
            self.kept.append(kept)

    def error(self, status: int) -> None:
        with self.lock:
            self.errors[status] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            n = self.queries
            return {
                "queries": n,
                "errors": {str(k): v for k, v in sorted(self.errors.items())},
                "latency_ms": {**percentiles(self.latency), "n": len(self.latency)},
                "model_ms": percentiles(self.model),
                "kept_visual_mean": self.kept_sum / n if n else None,
                "kept_visual_window_mean": float(np.mean(self.kept)) if self.kept else None,
                "n_visual": self.n_visual or None,
                "pruned_share": self.pruned / n if n else None,
            }
