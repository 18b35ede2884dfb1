"""What ADP's layer-0 text→vision score selects on the Meta-World reference policy (the "Why" of
``benchmarks/metaworld_pruning.md``).

For held-out first observations of every task of the ``metaworld`` suite, the policy with ADP forced
to prune (static schedule, original positions) reports the kept patches per camera; the script
measures, per view and ratio ρ:

* **instruction sensitivity**: Jaccard overlap of the kept set for the same observation under the
  task's own instruction and under every other task's instruction (1.0 = the text does not matter);
* **spatial coverage**: share of the 8×8 grid's rows and of its columns that hold a kept patch, and
  the mean distance (in patches) from each dropped patch to the nearest kept one; the same for the
  ``inverse`` pruner's sets and for uniformly random sets of the same size (the ``random``
  pruner's distribution), averaged over draws.

    PYTHONPATH=src MUJOCO_GL=egl python benchmarks/metaworld_score_probe.py --episodes 5 --keep 0.3 0.5
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from vla_adp.commands.common import EMBEDDED_POLICY
from vla_adp.envs.metaworld import TASKS, make_env, suite_tasks
from vla_adp.policy import Policy
from vla_adp.pruning.registry import build_pruner

FORCED = {"gate": {"schedule": "static", "limit_consecutive": False}, "positions": "original"}


def kept_sets(policy: Policy, obs: dict, instruction: str) -> list[set[int]]:
    policy.reset()
    info = policy.infer({**obs, "instruction": instruction})["info"]
    return [set(v) for v in info["kept_indices"]]


def coverage(kept: set[int], side: int) -> tuple[float, float, float]:
    """(rows with a kept patch, columns with a kept patch, mean distance dropped → nearest kept)."""
    rc = np.array([divmod(i, side) for i in kept])
    dropped = np.array([divmod(i, side) for i in range(side * side) if i not in kept])
    dist = np.sqrt(((dropped[:, None, :] - rc[None, :, :]) ** 2).sum(-1)).min(1).mean() if len(dropped) else 0.0
    return len(set(rc[:, 0])) / side, len(set(rc[:, 1])) / side, float(dist)


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b)


def probe(keep: float, episodes: int, draws: int, rng: np.random.Generator) -> list[str]:
    policy = Policy.load(EMBEDDED_POLICY, dtype=torch.float32, pruner=build_pruner("adp", keep, **FORCED))
    inverse = Policy(policy.ckpt, pruner=build_pruner("inverse", keep, **FORCED))
    side = int(round(policy.model.args.patches_per_image ** 0.5))
    tasks = suite_tasks("metaworld")
    other, cov, cov_inv, cov_rand = [[], []], [[], []], [[], []], [[], []]
    for t, task in enumerate(tasks):
        env = make_env("metaworld", t, image_size=policy.model.args.image_size)
        for ep in range(episodes):
            obs = env.reset(ep)
            mine = kept_sets(policy, obs, TASKS[task].instruction)
            inv = kept_sets(inverse, obs, TASKS[task].instruction)
            for view in range(2):
                cov[view].append(coverage(mine[view], side))
                cov_inv[view].append(coverage(inv[view], side))
                for _ in range(draws):
                    pick = set(rng.choice(side * side, size=len(mine[view]), replace=False).tolist())
                    cov_rand[view].append(coverage(pick, side))
            for other_task in tasks:
                if other_task == task:
                    continue
                theirs = kept_sets(policy, obs, TASKS[other_task].instruction)
                for view in range(2):
                    other[view].append(jaccard(mine[view], theirs[view]))
        env.close()
    lines = []
    for view, name in enumerate(("scene", "wrist")):
        c, i, r = np.mean(cov[view], 0), np.mean(cov_inv[view], 0), np.mean(cov_rand[view], 0)
        lines.append(f"| {keep} | {name} | {np.mean(other[view]):.2f} | {100 * c[0]:.0f} / {100 * c[1]:.0f} % | "
                     f"{100 * i[0]:.0f} / {100 * i[1]:.0f} % | {100 * r[0]:.0f} / {100 * r[1]:.0f} % | "
                     f"{c[2]:.2f} | {i[2]:.2f} | {r[2]:.2f} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=5, help="held-out first observations per task")
    p.add_argument("--keep", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--draws", type=int, default=20, help="random sets per observation")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| ρ | view | Jaccard, own vs other instruction | rows / cols covered: ADP | inverse | random | "
          "mean dist. dropped→kept: ADP | inverse | random |")
    print("|---|---|---|---|---|---|---|---|---|")
    for keep in args.keep:
        print("\n".join(probe(keep, args.episodes, args.draws, rng)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
