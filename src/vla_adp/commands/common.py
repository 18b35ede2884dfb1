"""Arguments several commands share (checkpoint, device, dtype, pruner)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
# Policies shipped in the package (package-data ``assets/**``): the Meta-World reference policy and
# its LightVLA fine-tune.
ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_POLICY = ASSETS / "metaworld_policy"
LIGHTVLA_POLICY = ASSETS / "metaworld_lightvla"


def add_checkpoint_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--checkpoint", required=required, help="checkpoint folder in the published OpenVLA-OFT layout")
    p.add_argument("--platform", default=None, help="libero | aloha | bridge | metaworld (default: from the folder, else libero)")
    p.add_argument("--unnorm-key", default=None, help="dataset key in dataset_statistics.json (e.g. libero_spatial)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--action-slice", choices=["upstream", "vla_adp"], default="upstream",
                   help="upstream = OFT training (default); vla_adp = the reference ADP code's +1 shift")
    p.add_argument("--no-center-crop", action="store_true", help="skip the 90%%-area center crop (default: crop unless the checkpoint records otherwise)")


def center_crop_of(args) -> bool:
    """Whether to center-crop: ``--no-center-crop`` wins, else the checkpoint's record, else True.

    Our writers record ``vla_adp.center_crop`` in ``config.json`` (False for the Meta-World reference
    policy); the published LIBERO checkpoints record nothing and were all trained with the crop.
    """
    if args.no_center_crop:
        return False
    try:
        config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    except (OSError, ValueError):
        return True  # the loader reports a missing or bad config.json properly
    return bool((config.get("vla_adp") or {}).get("center_crop", True))


def dtype_of(args) -> torch.dtype:
    """``--dtype``, else the library's rule (:func:`vla_adp.policy.default_dtype`)."""
    from vla_adp.policy import default_dtype

    return DTYPES[args.dtype] if args.dtype else default_dtype(args.device)


def add_pruner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pruner", default=None, help="pruning method (see `vla-adp pruners`); default: none")
    p.add_argument("--keep", type=float, default=None, help="share of visual tokens kept when pruning")
    p.add_argument("--pruning-config", default=None,
                   help="JSON file with pruner settings (reference ADP field names accepted)")


def build_pruner_from_args(args):
    """The pruner the arguments ask for, or None."""
    if not (args.pruner or args.pruning_config):
        return None
    from vla_adp.pruning.registry import build_pruner

    return build_pruner(args.pruner, keep=args.keep, config_file=args.pruning_config)


def load_policy(args, pruner=None):
    from vla_adp.policy import Policy, PolicyConfig

    cfg = PolicyConfig(unnorm_key=args.unnorm_key, center_crop=center_crop_of(args),
                       action_slice=args.action_slice)
    return Policy.load(args.checkpoint, cfg, pruner, platform=args.platform, dtype=dtype_of(args), device=args.device)
