"""Markdown table of a demonstration folder's ``meta.json``: expert success, seeds, lengths per task.

    python benchmarks/demo_table.py data/libero [data/libero_goal_probe ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def ranges(seeds: list[int]) -> str:
    """``[0, 1, 2, 5, 6]`` -> ``0–2, 5–6``."""
    out, start = [], None
    for i, s in enumerate(seeds):
        if start is None:
            start = s
        if i + 1 == len(seeds) or seeds[i + 1] != s + 1:
            out.append(f"{start}" if start == s else f"{start}–{s}")
            start = None
    return ", ".join(out) or "–"


def table(meta: dict) -> list[str]:
    lines = ["| task | instruction | expert success | kept episodes (seed = base + episode) | failed | "
             "steps mean / max | frames |", "|---|---|---|---|---|---|---|"]
    for task, m in meta["tasks"].items():
        lines.append(f"| {task} | {m['instruction']} | {m['kept']}/{m['attempts']} = {100 * m['expert_success']:.0f} % | "
                     f"{ranges(m['seeds'])} | {ranges(m['failed_seeds'])} | {m['steps_mean']:.0f} / {m['steps_max']} | "
                     f"{m['frames']} |")
    return lines


def main(argv: list[str]) -> int:
    for folder in argv or ["data/libero"]:
        meta = json.loads((Path(folder) / "meta.json").read_text())
        print(f"### {folder}: {meta.get('placement_seed', meta.get('train_seed_range'))}\n")
        print("\n".join(table(meta)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
