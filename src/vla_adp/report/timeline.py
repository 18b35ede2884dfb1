"""Gate timeline of one episode from its log: the motion curve that drives ADP's gate (paper Fig. 1, 10).

Three stacked panels over the query index (one query = one action-chunk window):

1. the displacement d the gate measured (paper Eq. 14–15, "net" ‖p_last − p_first‖ by default) and
   the adjacent-extrema thresholds it compared against (Eq. 17–18: max / min of the previous τ−1
   windows, logged by the pruner as ``gate_upper`` / ``gate_lower``; the mean rule logs
   ``gate_mean``);
2. the gate state (1 = prune, 0 = full vision), pruned windows shaded in every panel;
3. visual tokens kept per query, per camera.

Values are drawn as the pruner logged them with each query; nothing is recomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_adp.eval.schema import EpisodeRecord, QueryRecord
from vla_adp.eval.logs import EpisodeKey, RunLog, episode_keys
from vla_adp.viz.figures import pyplot, save_figure

THRESHOLD_KEYS = ("gate_upper", "gate_lower", "gate_mean")


@dataclass
class Timeline:
    """Per-query series of one episode (nan where the log has no value)."""

    key: EpisodeKey
    task: str
    success: bool | None
    query: np.ndarray
    step: np.ndarray
    displacement: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    mean: np.ndarray
    state: np.ndarray  # 1 pruned, 0 full vision
    kept: np.ndarray  # (Q, C) kept tokens per camera
    n_visual: int


def _value(q: QueryRecord, name: str) -> float:
    v = q.extra.get(name, getattr(q, name, None))
    return math.nan if v is None else float(v)


def episode_timeline(queries: Sequence[QueryRecord], episode: EpisodeRecord | None = None) -> Timeline:
    """The series of one episode's query records (in query order)."""
    if not queries:
        raise ValueError("an episode timeline needs at least one query record")
    qs = sorted(queries, key=lambda q: q.query)
    first = qs[0]
    state = [q.gate_state if q.gate_state is not None else int(q.pruned) for q in qs]
    return Timeline(
        key=(first.config_hash, first.suite, first.task_id, first.episode),
        task=first.task,
        success=None if episode is None else bool(episode.success),
        query=np.array([q.query for q in qs]),
        step=np.array([q.step for q in qs]),
        displacement=np.array([math.nan if q.displacement is None else q.displacement for q in qs], float),
        upper=np.array([_value(q, "gate_upper") for q in qs]),
        lower=np.array([_value(q, "gate_lower") for q in qs]),
        mean=np.array([_value(q, "gate_mean") for q in qs]),
        state=np.array(state, int),
        kept=np.array([list(q.kept_per_view) for q in qs], int),
        n_visual=int(first.n_visual),
    )


def _shade(ax, tl: Timeline) -> None:
    for x, s in zip(tl.query, tl.state):
        if s:
            ax.axvspan(x - 0.5, x + 0.5, color="tab:blue", alpha=0.12, lw=0)


def plot_timeline(tl: Timeline, path: str | Path, dpi: int = 100, width: float = 8.0) -> Path:
    """Write the three-panel PNG; returns its path."""
    plt = pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(width, 6.0), dpi=dpi, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1, 2]})
    _plot_motion(axes[0], tl)
    _plot_state(axes[1], tl)
    _plot_kept(axes[2], tl)
    for ax in axes:
        _shade(ax, tl)
    outcome = "" if tl.success is None else ("  success" if tl.success else "  failure")
    fig.suptitle(f"{tl.key[1]} task {tl.key[2]} episode {tl.key[3]}{outcome}\n{tl.task}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def _plot_motion(ax, tl: Timeline) -> None:
    ax.plot(tl.query, tl.displacement, "o-", ms=3, color="black", label="δ of the window this query closed")
    if np.isfinite(tl.upper).any():
        ax.step(tl.query, tl.upper, where="mid", ls="--", color="tab:red", label="upper (max of previous)")
    if np.isfinite(tl.lower).any():
        ax.step(tl.query, tl.lower, where="mid", ls="--", color="tab:green", label="lower (min of previous)")
    if np.isfinite(tl.mean).any():
        ax.step(tl.query, tl.mean, where="mid", ls=":", color="tab:purple", label="running mean")
    ax.set_ylabel("displacement")
    ax.legend(fontsize=7, loc="upper right")


def _plot_state(ax, tl: Timeline) -> None:
    ax.step(tl.query, tl.state, where="mid", color="tab:blue")
    ax.set_yticks([0, 1], ["full", "prune"])
    ax.set_ylim(-0.2, 1.2)
    ax.set_ylabel("gate")


def _plot_kept(ax, tl: Timeline) -> None:
    bottom = np.zeros(len(tl.query))
    for c in range(tl.kept.shape[1]):
        ax.bar(tl.query, tl.kept[:, c], bottom=bottom, width=0.8, label=f"camera {c}")
        bottom += tl.kept[:, c]
    ax.axhline(tl.n_visual, color="gray", lw=0.8, ls=":")
    ax.set_ylabel("kept tokens")
    ax.set_xlabel("query (action-chunk window)")
    ax.legend(fontsize=7, loc="lower right")


def timelines(log: RunLog, out_dir: str | Path, configs: set[str] | None = None, **match: Any) -> list[Path]:
    """One PNG per episode of the logs, filtered as :func:`~vla_adp.eval.logs.episode_keys` does."""
    out = []
    for key in episode_keys(log, configs, **match):
        tl = episode_timeline(log.queries[key], log.episodes.get(key))
        name = f"timeline_{key[0][:8]}_{key[1]}_t{key[2]}_e{key[3]}.png"
        out.append(plot_timeline(tl, Path(out_dir) / name))
    return out
