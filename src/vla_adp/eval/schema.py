"""Records of the JSONL run logs (docs/evaluation.md).

A log is one JSON object per line, each with a ``kind``:

* ``run``: written once when a run (re)starts: ``config`` (everything that defines the run), its
  ``config_hash``, versions, machine, time.
* ``query``: one per policy query: where (suite, task, episode, query index, env step), what the gate
  did (``gate_state`` 0/1, ``displacement``), what was kept (``kept_visual``, ``kept_per_view``,
  ``kept_indices``), sequence lengths, FLOPs, stage timings, end-effector position.
* ``episode``: one per finished episode: success, steps, queries, pruned queries, FLOPs, error text,
  and the paths of its videos when the runner recorded them.

``kept_indices`` (logged with ``--log-indices``; ``None`` for an unpruned query) is one list per
camera of the visual tokens kept by the query's last cut, each index *local* to that camera's patch
grid: 0..P−1 with P patches per camera, token j = patch (j // G, j % G) of the G×G grid.

``flops`` is the cost of a query as the policy ran it (decoder + the pruner's scoring); ``flops_full``
(``flops_full_total`` per episode) the same query's decoder unpruned, so a report made from logs
alone gives the expected speedup.
``extra`` holds what else the policy or runner reported: ``batch`` (queries in the forward, parallel
runner), ``latency_s`` / ``latency_steps`` / ``latency_source`` (real-time mode: the latency used and
the control steps that passed while the policy thought).
Query lines of an episode count only once its ``episode`` line follows (an interrupted attempt
leaves query lines that the reader drops).

Reports and plots are made from logs only, so logs from many machines merge by concatenation. A run
resumes by skipping every (config_hash, suite, task_id, episode) that already has an ``episode`` line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class QueryRecord:
    config_hash: str
    suite: str
    task_id: int
    task: str
    episode: int
    query: int
    step: int
    pruner: str | None
    pruned: bool
    gate_state: int | None
    displacement: float | None
    kept_visual: int
    n_visual: int
    kept_per_view: list[int]
    seq_len: int
    seq_len_pruned: int
    flops: float
    timing_ms: dict[str, float]
    eef_pos: list[float] | None = None
    kept_indices: list[list[int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    flops_full: float | None = None
    kind: str = "query"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpisodeRecord:
    config_hash: str
    suite: str
    task_id: int
    task: str
    episode: int
    seed: int
    success: bool
    steps: int
    queries: int
    pruned_queries: int
    flops_total: float
    wall_s: float
    error: str | None = None
    video: str | None = None
    overlay_video: str | None = None
    flops_full_total: float | None = None
    kind: str = "episode"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.config_hash, self.suite, self.task_id, self.episode)


@dataclass
class RunRecord:
    """Written when a run (re)starts; ``config["method"]`` is what a report row groups by.

    ``versions``, ``machine``, ``time`` and ``argv`` describe where it ran, not what it was: logs
    written by hand (examples, other tools) may leave them out.
    """

    config_hash: str
    method_hash: str
    config: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    time: str = ""
    argv: list[str] = field(default_factory=list)
    kind: str = "run"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECORDS = {"query": QueryRecord, "episode": EpisodeRecord, "run": RunRecord}
