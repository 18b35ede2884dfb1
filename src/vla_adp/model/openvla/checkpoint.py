"""Read and write ``openvla/openvla-7b``-layout folders (Prismatic, no action head, no proprio).

    config.json                       model_type "openvla", OpenVLAForActionPrediction, text_config (Llama),
                                      norm_stats {<dataset>: {action: {q01, q99, mask, …}, …}}
    model.safetensors.index.json      weight_map -> shards
    model-0000k-of-0000N.safetensors  vision_backbone.*, projector.*, language_model.{model.*, lm_head.*}
    dataset_statistics.json           optional; replaces config.json's norm_stats when present, as
                                      upstream's ``get_vla`` does (``experiments/robot/openvla_utils.py``)
    tokenizer.model (+ tokenizer_config.json, special_tokens_map.json), preprocessor_config.json

The weight keys are OpenVLA-OFT's minus its side modules, so the readers of
:mod:`vla_adp.model.checkpoint` (index, shard headers, tower geometry from shapes, ``text_config``,
strict key/shape verification) are reused and fail the same way: :class:`CheckpointError` naming the
file, the key, what was found and what was expected. What is OpenVLA's own is checked here: that the
folder is not an OFT one (an ``action_head--*.pt`` beside it), the statistics every dataset needs to
un-normalise actions (``action.q01`` / ``q99`` of one length, an optional boolean ``mask``), and that
the tokenizer has exactly ``vocab_size - pad_to_multiple_of`` pieces, the ids whose last 256 are the
action bins (``prismatic/vla/action_tokenizer.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vla_adp.constants import Platform
from vla_adp.model.checkpoint import (CheckpointError, Shapes, check_tokenizer, derive_llm, derive_prismatic, first_line,
                                      is_finite_number, json_type, load_main_state, positive_int, preprocessor_config,
                                      published_config, read_checkpoint_json, read_shapes, to_published_key,
                                      verify_state, weight_map, weights_name, write_shards)
from vla_adp.model.openvla.config import OpenVLAArgs
from vla_adp.model.openvla.openvla import OpenVLA

ARCHITECTURE = "OpenVLAForActionPrediction"
STATS_FILE = "dataset_statistics.json"


@dataclass
class OpenVLACheckpoint:
    """A loaded folder: the model plus what the policy's transforms need (the fields of OFT's
    :class:`~vla_adp.model.checkpoint.Checkpoint`, so :class:`vla_adp.policy.Policy` reads it)."""

    model: OpenVLA
    args: OpenVLAArgs
    path: Path
    config: dict[str, Any]
    norm_stats: dict[str, Any]
    tokenizer_file: Path
    platform: Platform


# -- config and statistics -------------------------------------------------------------------
def check_config(config: dict, folder: Path) -> None:
    """An OpenVLA config, not an OFT folder (which shares ``model_type``) nor another model."""
    if config.get("model_type") != "openvla":
        raise CheckpointError(f"{folder / 'config.json'}: model_type is {config.get('model_type')!r}, "
                              "expected 'openvla'")
    arch = config.get("architectures")
    if arch is not None and arch != [ARCHITECTURE]:
        raise CheckpointError(f"{folder / 'config.json'}: architectures is {arch!r}, expected [{ARCHITECTURE!r}]")
    side = sorted(p.name for p in folder.glob("*.pt") if "checkpoint" in p.name)
    if side:
        raise CheckpointError(f"{folder}: holds OpenVLA-OFT side modules {side}; load it with "
                              "vla_adp.model.checkpoint.load_checkpoint (this loader reads openvla/openvla-7b folders)")


def read_norm_stats(folder: Path, config: dict) -> tuple[dict, str]:
    """``dataset_statistics.json`` if present (upstream's override), else ``config.json``'s ``norm_stats``."""
    path = folder / STATS_FILE
    if path.is_file():
        return read_checkpoint_json(path), str(path)
    stats = config.get("norm_stats")
    if stats is None:
        raise CheckpointError(f"{folder}: no {STATS_FILE} and no 'norm_stats' in config.json; one of them must hold "
                              "the action statistics (q01/q99) used to un-normalise actions")
    if not isinstance(stats, dict):
        raise CheckpointError(f"{folder / 'config.json'}: 'norm_stats' is a JSON {json_type(stats)}, expected an object")
    return stats, f"{folder / 'config.json'} norm_stats"


def check_action_stats(stats: dict, where: str) -> None:
    """Every dataset has ``action.q01`` / ``q99``: finite numbers, one length, and an optional ``mask`` of
    booleans of that length (``predict_action`` reads exactly these)."""
    if not stats:
        raise CheckpointError(f"{where}: no dataset entries")
    for dataset, entry in stats.items():
        at = f"{where}: dataset {dataset!r}"
        block = entry.get("action") if isinstance(entry, dict) else None
        if not isinstance(block, dict):
            found = json_type(entry) if not isinstance(entry, dict) else f"{json_type(block)} 'action'"
            raise CheckpointError(f"{at} is a JSON {found}, expected an object with an 'action' object "
                                  "holding 'q01' and 'q99'")
        lengths = []
        for key in ("q01", "q99"):
            v = block.get(key)
            if not (isinstance(v, list) and v and all(is_finite_number(x) for x in v)):
                found = f"{len(v)} values with a non-number or non-finite value" if isinstance(v, list) and v \
                    else f"a JSON {json_type(v)}" if not isinstance(v, list) else "an empty list"
                raise CheckpointError(f"{at}: action.{key} is {found}, expected a list of finite numbers "
                                      "(one per action dimension)")
            lengths.append(len(v))
        if lengths[0] != lengths[1]:
            raise CheckpointError(f"{at}: action.q01 has {lengths[0]} values but action.q99 {lengths[1]}")
        if "mask" in block:
            m = block["mask"]
            if not (isinstance(m, list) and len(m) == lengths[0] and all(isinstance(x, bool) for x in m)):
                raise CheckpointError(f"{at}: action.mask is {str(m)[:60]}, expected {lengths[0]} booleans")


# -- shapes -> args --------------------------------------------------------------------------
def derive_openvla_args(config: dict, shapes: dict, preprocessor: dict | None = None) -> OpenVLAArgs:
    towers, projector_hidden = derive_prismatic(config, shapes, preprocessor)
    llm = derive_llm(config.get("text_config") or {}, shapes)
    try:
        return OpenVLAArgs(
            towers=towers, llm=llm, projector_hidden=projector_hidden,
            pad_to_multiple_of=positive_int(config, "pad_to_multiple_of", "config.json", 64),
            n_action_bins=positive_int(config, "n_action_bins", "config.json", 256),
        )
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"config.json and {weights_name(shapes)} describe no valid OpenVLA: {e}") from None


def _check_vocabulary(tokenizer_file: Path, args: OpenVLAArgs) -> None:
    from vla_adp.model.tokenizer import PromptTokenizer

    pieces = PromptTokenizer(tokenizer_file).vocab_size
    if pieces != args.n_real_vocab:
        raise CheckpointError(
            f"{tokenizer_file}: {pieces} pieces, expected text_config.vocab_size {args.llm.vocab_size} - "
            f"pad_to_multiple_of {args.pad_to_multiple_of} = {args.n_real_vocab}: the action bins are the last "
            f"{args.n_action_bins} of those ids (upstream ActionTokenizer), so the tokenizer must have exactly that many")


# -- loading ---------------------------------------------------------------------------------
def load_openvla_checkpoint(path: str | Path, dtype: torch.dtype = torch.bfloat16,
                            device: str | torch.device = "cpu", platform: Platform | None = None) -> OpenVLACheckpoint:
    """Build OpenVLA from an ``openvla/openvla-7b``-layout folder on the meta device and load it strictly.

    Args:
        platform: the environment's shapes for the policy (eef slices for the gate); default: one action
            of the statistics' width per query, LIBERO's state slices.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config = read_checkpoint_json(folder / "config.json")
    check_config(config, folder)
    stats, stats_where = read_norm_stats(folder, config)
    check_action_stats(stats, stats_where)
    wm = weight_map(folder)
    shapes = Shapes(read_shapes(folder, wm))
    shards = sorted(set(wm.values()))
    shapes.source = shards[0] if len(shards) == 1 else f"the weight shards {shards}"
    pre_file = folder / "preprocessor_config.json"
    args = derive_openvla_args(config, shapes, read_checkpoint_json(pre_file) if pre_file.is_file() else None)
    tok = check_tokenizer(folder / "tokenizer.model", args.llm.vocab_size)
    _check_vocabulary(tok, args)
    try:
        with torch.device("meta"):
            model = OpenVLA(args)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"config.json and {shapes.source} describe no buildable model ({first_line(e)})") from None
    state = load_main_state(folder, wm, dtype, device)
    verify_state(model.state_dict(), state, shapes.source, wm)
    model.load_state_dict(state, strict=True, assign=True)
    plat = platform or default_platform(stats)
    return OpenVLACheckpoint(model.eval(), args, folder, config, stats, tok, plat)


def default_platform(stats: dict) -> Platform:
    """One action per query of the statistics' width; LIBERO's state layout for the gate (eef xyz, axis-angle)."""
    width = len(next(iter(stats.values()))["action"]["q01"])
    return Platform("openvla", chunk=1, action_dim=width, proprio_dim=8, eef_rot=(3, 6))


# -- writing ---------------------------------------------------------------------------------
def openvla_config(args: OpenVLAArgs, norm_stats: dict, hints: dict | None = None) -> dict:
    """``config.json`` as ``openvla/openvla-7b`` publishes it (``norm_stats`` inside); ``hints`` go to
    our own ``vla_adp`` section."""
    cfg = published_config(args, hints=hints)  # the Prismatic fields OFT's writer produces from the same shapes
    cfg.pop("num_images_in_input", None)  # an OFT field
    cfg["norm_stats"] = norm_stats
    return cfg


def save_openvla_checkpoint(model: OpenVLA, folder: str | Path, norm_stats: dict, tokenizer_file: str | Path,
                            max_shard_bytes: int = 5 * 2**30, dtype: torch.dtype = torch.bfloat16,
                            write_statistics_file: bool = False, hints: dict | None = None) -> Path:
    """Write ``model`` in the published layout; ``write_statistics_file`` also writes
    ``dataset_statistics.json`` (as fine-tuning runs do) beside ``config.json``'s ``norm_stats``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {to_published_key(k): v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    write_shards(folder, state, max_shard_bytes)
    (folder / "config.json").write_text(json.dumps(openvla_config(model.args, norm_stats, hints), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(model.args), indent=2))
    if write_statistics_file:
        (folder / STATS_FILE).write_text(json.dumps(norm_stats, indent=2))
    (folder / "tokenizer.model").write_bytes(Path(tokenizer_file).read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                             "padding_side": "right", "pad_token": "<PAD>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                               "unk_token": "<unk>", "pad_token": "<PAD>"}))
    return folder
