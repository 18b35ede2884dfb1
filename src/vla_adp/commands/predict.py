"""``vla-adp predict --checkpoint DIR [--obs FILE]``: one action chunk and its timings.

``--obs`` reads ``.npz`` (no pickled objects) or ``.json`` (the server's body: json-numpy arrays or
plain lists) and validates it as the policy server does. Pickle files are refused: loading one runs
whatever code it holds. OFT's ``sample_libero_spatial_observation.pkl`` converts once, in a
Python you trust::

    python -c "import pickle, numpy as np; np.savez('obs.npz', **pickle.load(open('sample.pkl', 'rb')))"
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vla_adp.commands.common import (add_checkpoint_args, add_family_arg, add_pruner_args, build_pruner_from_args,
                                     load_policy)


def add_arguments(p) -> None:
    add_checkpoint_args(p)
    add_family_arg(p)
    add_pruner_args(p)
    p.add_argument("--obs", default=None,
                   help=".npz or .json with full_image, wrist_image, state and instruction/task_description "
                        "(pickle files are refused: see the module help to convert OFT's sample .pkl); "
                        "default: a synthetic observation")
    p.add_argument("--instruction", default=None, help="override the observation's instruction")
    p.add_argument("--repeat", type=int, default=5,
                   help="queries in one episode (the action-aware gate starts with full-vision windows); "
                        "the last query's actions and timings are printed")
    p.add_argument("--json", action="store_true", help="print actions and info as JSON")


def read_obs(path: str | None, policy, instruction: str | None = None) -> dict:
    """The observation in ``path`` (checked against ``policy`` when given), else a synthetic one;
    ``instruction`` replaces the file's."""
    if path is None:
        from vla_adp.serve.server import served_inputs

        rng = np.random.default_rng(0)
        inputs = served_inputs(policy)
        size = inputs["image_size"]
        obs = {"full_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
               "state": np.zeros(policy.platform.proprio_dim), "instruction": "pick up the black bowl"}
        for i in range(1, inputs["n_images"]):
            obs[f"wrist_image{'' if i == 1 else f'_{i}'}"] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        return obs
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"observation file not found: {p}")
    if p.suffix in (".pkl", ".pickle"):
        raise ValueError(f"{p}: pickle files are not read (loading one runs the code it holds); convert it to .npz "
                         "in a Python you trust: python -c \"import pickle, numpy as np; np.savez('obs.npz', "
                         f"**pickle.load(open('{p.name}', 'rb')))\"")
    if p.suffix == ".npz":
        obs = _read_npz(p)
    elif p.suffix == ".json":
        obs = _read_json_obs(p)
    else:
        raise ValueError(f"--obs must be a .npz or .json file, got {p.name!r}")
    if instruction:
        obs.pop("task_description", None)
        obs["instruction"] = instruction
    return obs if policy is None else _checked(obs, p, policy)


def _read_npz(p: Path) -> dict:
    import zipfile

    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: (str(z[k]) if z[k].dtype.kind in "US" else z[k]) for k in z.files}
    except ValueError as e:  # an object array: stored as a pickle inside the archive
        raise ValueError(f"{p}: {e} (store plain numeric arrays and strings)") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise ValueError(f"{p}: not a readable .npz archive ({type(e).__name__}: {e})") from None


def _read_json_obs(p: Path) -> dict:
    from vla_adp.serve.validate import RequestError, parse_json

    try:
        obs, _ = parse_json(p.read_bytes())
    except RequestError as e:
        raise ValueError(f"{p}: {e.error} (expected {e.expected})") from None
    for key, value in obs.items():  # plain nested lists: images as uint8, states as float
        if isinstance(value, list) and (key == "full_image" or "wrist" in key):
            arr = np.asarray(value) if _numeric(value) else None
            if arr is not None and arr.dtype.kind in "iu" and arr.size and 0 <= arr.min() and arr.max() <= 255:
                obs[key] = arr.astype(np.uint8)
    return obs


def _numeric(value) -> bool:
    try:
        return np.asarray(value).dtype.kind in "iuf"
    except (ValueError, TypeError):
        return False


def _checked(obs: dict, p: Path, policy) -> dict:
    """The observation as the policy server would accept it (same checks and messages), else a ValueError."""
    from vla_adp.serve.server import served_inputs
    from vla_adp.serve.validate import ObsSpec, RequestError, check_act

    a = served_inputs(policy)
    spec = ObsSpec(n_wrist=a["n_images"] - 1, proprio_dim=policy.platform.proprio_dim, needs_state=a["needs_state"])
    try:
        return check_act(obs, spec).obs
    except RequestError as e:
        raise ValueError(f"{p}: {e.error} (expected {e.expected})") from None


def run(args) -> int:
    pruner = build_pruner_from_args(args)
    policy = load_policy(args, pruner)
    obs = read_obs(args.obs, policy, args.instruction)
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
