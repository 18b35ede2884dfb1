"""``vla-adp predict --checkpoint DIR [--obs FILE]``: one action chunk and its timings."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from vla_adp.commands.common import add_checkpoint_args, add_pruner_args, build_pruner_from_args, load_policy


def add_arguments(p) -> None:
    add_checkpoint_args(p)
    add_pruner_args(p)
    p.add_argument("--obs", default=None,
                   help=".npz or .pkl with full_image, wrist_image, state and instruction/task_description "
                        "(OFT's sample_libero_spatial_observation.pkl works); default: a synthetic observation")
    p.add_argument("--instruction", default=None, help="override the observation's instruction")
    p.add_argument("--repeat", type=int, default=5,
                   help="queries in one episode (the action-aware gate starts with full-vision windows); "
                        "the last query's actions and timings are printed")
    p.add_argument("--json", action="store_true", help="print actions and info as JSON")


def read_obs(path: str | None, policy) -> dict:
    if path is None:
        rng = np.random.default_rng(0)
        size = policy.model.args.image_size
        obs = {"full_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
               "state": np.zeros(policy.platform.proprio_dim), "instruction": "pick up the black bowl"}
        for i in range(1, policy.model.args.n_images):
            obs[f"wrist_image{'' if i == 1 else f'_{i}'}"] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        return obs
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"observation file not found: {p}")
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            obs = {k: (str(z[k]) if z[k].dtype.kind in "US" else z[k]) for k in z.files}
    elif p.suffix in (".pkl", ".pickle"):
        with open(p, "rb") as f:
            obs = pickle.load(f)
    else:
        raise ValueError(f"--obs must be a .npz or .pkl file, got {p.name!r}")
    if not isinstance(obs, dict):
        raise ValueError(f"{p}: expected a dict of observation fields, found {type(obs).__name__}")
    return obs


def run(args) -> int:
    pruner = build_pruner_from_args(args)
    policy = load_policy(args, pruner)
    obs = read_obs(args.obs, policy)
    if args.instruction:
        obs["instruction"] = args.instruction
    policy.reset()
    pruned = []
    for _ in range(max(1, args.repeat)):
        out = policy.infer(obs)
        pruned.append(int(out["info"]["pruned"]))
    actions, info = out["actions"], out["info"]
    if args.json:
        info = {k: v for k, v in info.items() if k != "kept_indices"}
        print(json.dumps({"actions": actions.tolist(), "info": info}, indent=2, default=float))
        return 0
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    print(f"checkpoint {args.checkpoint}  platform {policy.platform.name}  unnorm_key {policy.unnorm_key}")
    if policy.pruner is not None:
        print(f"pruner {policy.pruner.name}: pruned per query {pruned} (1 = pruned; gate info: "
              + ", ".join(f"{k}={info[k]}" for k in ("gate_reason", "displacement") if k in info) + ")")
    print(f"action chunk {actions.shape}:\n{actions}")
    print(f"sequence {info['seq_len']} -> {info['seq_len_pruned']} tokens, visual kept {info['kept_visual']}/{info['n_visual']}"
          f" per view {info['kept_per_view']}, LLM {info['flops'] / 1e12:.4f} TFLOPs (paper convention)")
    print("timings (ms): " + "  ".join(f"{k} {v:.1f}" for k, v in info["timing_ms"].items()))
    return 0
