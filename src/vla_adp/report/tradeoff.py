"""Accuracy–compute trade-off from logs (the paper's LIBERO figure and Table 1's SR vs FLOPs/speedup).

One point per method (:mod:`~vla_adp.report.summary`): success rate over all its episodes with a 95 %
Wilson interval, against its expected FLOPs per query (mean over every logged query, pruned or not)
and the speedup (FLOPs ratio, as the paper's "Speedup (Orig/Exp.)" of Tables 5–9).
Points of one pruner are joined in order of keep ratio.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from vla_adp.eval.logs import RunLog
from vla_adp.viz.figures import pyplot, save_figure
from vla_adp.report.summary import baseline_method, expected_flops, full_flops, methods, pruned_share, success_rates, traits


@dataclass(frozen=True)
class TradeoffPoint:
    method: str
    label: str
    pruner: str | None
    keep_ratio: float | None
    episodes: int
    successes: int
    success: float
    low: float
    high: float
    expected_flops: float
    pruned_share: float
    speedup: float


def tradeoff_points(log: RunLog, baseline: str | None = None) -> list[TradeoffPoint]:
    """Every method with episodes. Speedup over the same queries unpruned (``flops_full``) where the
    log has it, else over ``baseline`` (a method id; default: the one unpruned method)."""
    baseline = baseline or baseline_method(log)
    base_flops = expected_flops(log, baseline) if baseline else math.nan
    points = []
    for m in sorted(methods(log)):
        rate = success_rates(log, m).get(None)
        if rate is None:
            continue
        t = traits(log, m)
        flops, full = expected_flops(log, m), full_flops(log, m)
        ref = full if math.isfinite(full) else base_flops
        points.append(TradeoffPoint(m, t.label, t.pruner, t.keep_ratio, rate.n, rate.k, rate.rate, rate.lo, rate.hi,
                                    flops, pruned_share(log, m), ref / flops if flops else math.nan))
    if not points:
        raise ValueError("the logs hold no episode records: nothing to plot")
    return points


def plot_tradeoff(points: list[TradeoffPoint], path: str | Path, dpi: int = 100) -> Path:
    """Two panels: success vs expected TFLOPs, success vs speedup (when a baseline exists)."""
    plt = pyplot()
    with_speedup = any(math.isfinite(p.speedup) for p in points)
    fig, axes = plt.subplots(1, 2 if with_speedup else 1, figsize=(10 if with_speedup else 5.5, 4.2), dpi=dpi,
                             squeeze=False)
    scale, unit = _flops_unit(max(p.expected_flops for p in points))
    _panel(axes[0, 0], points, lambda p: p.expected_flops / scale, f"expected LLM {unit} per query")
    if with_speedup:
        _panel(axes[0, 1], points, lambda p: p.speedup, "speedup (baseline FLOPs / expected FLOPs)")
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def _flops_unit(largest: float) -> tuple[float, str]:
    # Tiny test models run at MFLOPs, OpenVLA-7B at TFLOPs: pick a unit the tick labels can show.
    for scale, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs")):
        if largest >= scale:
            return scale, unit
    return 1.0, "FLOPs"


def _panel(ax, points: list[TradeoffPoint], x_of, xlabel: str) -> None:
    groups: dict[str, list[TradeoffPoint]] = defaultdict(list)
    for p in points:
        groups[p.label.rsplit(" ρ=", 1)[0]].append(p)
    for name, pts in sorted(groups.items()):
        pts = sorted(pts, key=lambda p: (p.keep_ratio is None, p.keep_ratio or 0))
        xs = [x_of(p) for p in pts]
        ys = [100 * p.success for p in pts]
        # max(0, .): at 0 % / 100 % the interval's end equals the rate up to float rounding
        err = [[max(0.0, 100 * (p.success - p.low)) for p in pts], [max(0.0, 100 * (p.high - p.success)) for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        for x, y, p in zip(xs, ys, pts):
            if p.keep_ratio is not None:
                ax.annotate(f"{p.keep_ratio:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("success rate (%)  [95% Wilson]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def write_points(points: list[TradeoffPoint], path: str | Path) -> Path:
    """The plotted numbers as JSON, so every point can be checked against its logs."""
    path = Path(path)
    path.write_text(json.dumps([asdict(p) for p in points], indent=2, default=str))
    return path
