"""Arguments several commands share (checkpoint, model family, device, dtype, pruner)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vla_adp.families import DEFAULT_FAMILY, FAMILIES, ModelFamily, get_family
from vla_adp.seam.layout import ACTION_SLICES
from vla_adp.utils.machine import DTYPES, default_dtype

# Policies shipped in the package (package-data ``assets/**``): the Meta-World reference policy and
# its LightVLA fine-tune.
ASSETS = Path(__file__).resolve().parents[1] / "assets"
EMBEDDED_POLICY = ASSETS / "metaworld_policy"
LIGHTVLA_POLICY = ASSETS / "metaworld_lightvla"
LIBERO_POLICY = ASSETS / "libero_policy"  # the LIBERO reference policy (benchmarks/libero_training.md)


def add_checkpoint_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--checkpoint", required=required,
                   help="checkpoint folder in the published OpenVLA-OFT layout, or a Hugging Face Hub repo id such as "
                        "moojink/openvla-7b-oft-finetuned-libero-spatial (cached; HF_HUB_OFFLINE=1: cache only)")
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a repo id --checkpoint")
    p.add_argument("--platform", default=None, help="libero | aloha | bridge | metaworld (default: from the folder, else libero)")
    p.add_argument("--unnorm-key", default=None, help="dataset key in dataset_statistics.json (e.g. libero_spatial)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--action-slice", choices=ACTION_SLICES, default=None,
                   help="upstream = OFT training (default); vla_adp = the reference ADP code's +1 shift")
    p.add_argument("--no-center-crop", action="store_true", help="skip the 90%%-area center crop (default: crop unless the checkpoint records otherwise)")


def add_family_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY,
                   help="model family of --checkpoint: " + "; ".join(f"{f.name}: {f.description}"
                                                                    for f in FAMILIES.values()))


def resolve_checkpoint_arg(args) -> None:
    """A Hub repo id in ``args.checkpoint`` becomes its cached snapshot folder (:mod:`vla_adp.model.hub`);
    folders, and names that are neither, stay as they are (the loader reports what is missing)."""
    from vla_adp.model.hub import is_repo_id, resolve_checkpoint

    ckpt, revision = getattr(args, "checkpoint", None), getattr(args, "revision", None)
    if ckpt is None or (Path(ckpt).exists() and revision is None):
        return
    if revision is not None or is_repo_id(str(ckpt)):
        args.checkpoint = str(resolve_checkpoint(ckpt, revision))


def center_crop_of(args) -> bool:
    """Whether to center-crop: ``--no-center-crop`` wins, else the checkpoint's record, else True.

    Our writers record ``vla_adp.center_crop`` in ``config.json`` (False for the Meta-World reference
    policy); the published LIBERO checkpoints record nothing and were all trained with the crop.
    """
    if args.no_center_crop:
        return False
    try:
        config = json.loads((Path(args.checkpoint) / "config.json").read_text())
    except (OSError, ValueError, RecursionError):
        return True  # the loader reports a missing or bad config.json properly
    ours = config.get("vla_adp") if isinstance(config, dict) else None
    return bool(ours.get("center_crop", True)) if isinstance(ours, dict) else True  # (the loader checks the types)


def policy_settings(args) -> dict:
    """The policy config fields of the command line for ``--family``.

    A family on OpenVLA-OFT's :class:`~vla_adp.policy.PolicyConfig` gets every field, filled as always
    (the checkpoint's crop record, the ``upstream`` slice): those dicts are part of the OFT run hashes.
    Another family gets only the ones the user set, so its config can refuse them by name.
    """
    if family_of(args).oft_settings:
        return {"unnorm_key": args.unnorm_key, "center_crop": center_crop_of(args),
                "action_slice": args.action_slice or "upstream"}
    given = {"unnorm_key": args.unnorm_key, "center_crop": False if args.no_center_crop else None,
             "action_slice": args.action_slice}
    return {k: v for k, v in given.items() if v is not None}


def dtype_of(args) -> torch.dtype:
    """``--dtype``, else the library's rule (:func:`vla_adp.utils.machine.default_dtype`)."""
    return DTYPES[args.dtype] if args.dtype else default_dtype(args.device)


def add_pruner_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pruner", default=None, help="pruning method (see `vla-adp pruners`); default: none")
    p.add_argument("--keep", type=float, default=None, help="share of visual tokens kept when pruning")
    p.add_argument("--pruning-config", default=None,
                   help="JSON file with pruner settings (reference ADP field names accepted)")


def family_of(args) -> ModelFamily:
    """The :class:`~vla_adp.families.ModelFamily` of ``--family`` (commands without it: the default)."""
    return get_family(getattr(args, "family", DEFAULT_FAMILY))


def build_pruner_from_args(args):
    """The pruner the arguments ask for (the family's variant of the method), or None."""
    if not (args.pruner or args.pruning_config):
        return None
    return family_of(args).build_pruner(args.pruner, keep_ratio=args.keep, config_file=args.pruning_config)


def load_policy(args, pruner=None):
    family = family_of(args)
    cfg = family.make_config(**policy_settings(args))
    return family.load(args.checkpoint, cfg, pruner, platform=args.platform, dtype=dtype_of(args), device=args.device)
