"""Matplotlib without a display: the headless backend, and a figure written to a file and released.

Every plot of this package (timelines, trade-off, layer analysis) goes through these two, so a
figure is never left open (pyplot keeps every figure alive until it is closed) and the output folder
always exists.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display on robots, CI or Ray workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (parent folders made), close it, return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
