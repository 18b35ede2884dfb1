"""Read and write OpenVLA-OFT checkpoint folders in the published layout (moojink/openvla-7b-oft-finetuned-libero-spatial; the key layout of ``model.safetensors.index.json``).

    config.json                       OpenVLA HF config; ``text_config`` = LlamaConfig
    model.safetensors.index.json      weight_map -> shards
    model-0000k-of-0000N.safetensors  vision_backbone.*, projector.*, language_model.*
    action_head--<step>_checkpoint.pt        L1 head state dict (keys may start with 'module.')
    proprio_projector--<step>_checkpoint.pt  proprio projector state dict (idem)
    dataset_statistics.json           {<dataset>: {action: {q01, q99, mask, …}, proprio: {…}}}
    tokenizer.model (+ tokenizer_config.json, special_tokens_map.json), preprocessor_config.json

Loading is strict and validates everything a request will touch, so that a folder that loads can
serve: a missing, unreadable or mistyped file, a missing or unexpected key, a shape mismatch, a
non-floating-point or non-finite tensor, statistics of the wrong length and a tokenizer the model
cannot embed all raise :class:`CheckpointError` (a ``ValueError``; the CLI prints it as one line)
naming the file, the key, what was found and what was expected. The vision towers' geometry is
derived from the tensor shapes (the config names only the timm ids). Nothing is unpickled: side
``.pt`` files load with ``torch.load(weights_only=True)`` and must hold plain tensors.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vla_adp.constants import Platform, get_platform
from vla_adp.model.config import TIMM_HEAD_DIM, LlamaArgs, OFTArgs, VisionTowerArgs
from vla_adp.model.openvla_oft import OpenVLAOFT

INDEX_FILE = "model.safetensors.index.json"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOWER_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")


class CheckpointError(ValueError):
    """A checkpoint folder is not in the expected layout; the message says what and where."""


@dataclass
class Checkpoint:
    """A loaded folder: the model plus what the transforms need."""

    model: OpenVLAOFT
    args: OFTArgs
    path: Path
    config: dict[str, Any]
    norm_stats: dict[str, Any]
    tokenizer_file: Path
    platform: Platform


FLOAT_DTYPES = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}  # safetensors' names


# -- small readers ---------------------------------------------------------------------------
def read_checkpoint_json(path: Path, expect: type | None = dict) -> Any:
    """A JSON file's content (of type ``expect`` if given); every failure names the file."""
    if not path.is_file():
        raise CheckpointError(f"missing file {path.name} in {path.parent}")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    except (OSError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if expect is not None and not isinstance(data, expect):
        raise CheckpointError(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                              f"found a JSON {json_type(data)}")
    return data


def json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _find_side_file(folder: Path, kind: str, required: bool) -> Path | None:
    """The one ``*{kind}*checkpoint*.pt`` file (the reference asserts exactly one)."""
    found = sorted(p for p in folder.glob("*.pt") if kind in p.name and "checkpoint" in p.name)
    if len(found) > 1:
        raise CheckpointError(f"{folder}: expected one '{kind}--<step>_checkpoint.pt', found {[p.name for p in found]}")
    if not found and required:
        raise CheckpointError(f"{folder}: missing '{kind}--<step>_checkpoint.pt'")
    return found[0] if found else None


class SideState(dict):
    """A side module's state dict that remembers the file it came from (for error messages)."""

    source = "<memory>"


def _load_side_state(path: Path) -> SideState:
    try:  # weights_only: tensors and plain containers only, no code from the file runs
        with warnings.catch_warnings():  # torch warns about unusual pickle protocols; our error says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or truncated file, a pickle that wants to run code, ...
        raise CheckpointError(f"{path}: cannot read the state dict safely ({first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    for k, v in state.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: key {k!r} holds a {type(v).__name__}, expected a tensor")
        _check_tensor(v, str(k), path.name)
    # Saved from DDP-wrapped modules: strip a leading 'module.'.
    out = SideState((k[len("module."):] if k.startswith("module.") else k, v) for k, v in state.items())
    out.source = path.name
    return out


def _check_tensor(t: torch.Tensor, key: str, source: str) -> None:
    """Floating point (a cast from int would load silently) and finite."""
    if not t.is_floating_point():
        raise CheckpointError(f"{source}: tensor {key!r} is stored as {t.dtype}, expected a floating-point type")
    if not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{source}: tensor {key!r} holds non-finite values (NaN or inf)")


def weight_map(folder: Path) -> dict[str, str]:
    """key -> shard file, from the index (or the single ``model.safetensors``)."""
    index = folder / INDEX_FILE
    if index.is_file():
        wm = read_checkpoint_json(index).get("weight_map")
        if not isinstance(wm, dict) or not wm:
            raise CheckpointError(f"{index}: no 'weight_map' object")
        for key, shard in wm.items():
            if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
                raise CheckpointError(f"{index}: weight_map[{key!r}] is {shard!r}, expected the file name of a "
                                      "*.safetensors shard in the same folder")
        for shard in sorted(set(wm.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(f"{index} names shard {shard!r}, which is missing from {folder}")
        return wm
    single = folder / "model.safetensors"
    if single.is_file():
        try:
            with safe_open(str(single), "pt") as f:
                return {k: single.name for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f"{single}: not a readable safetensors file ({first_line(e)})") from None
    raise CheckpointError(f"{folder}: missing {INDEX_FILE} (or model.safetensors)")


def read_shapes(folder: Path, wm: dict[str, str]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the shard headers; refuses non-floating-point tensors."""
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in sorted(set(wm.values())):
        try:
            with safe_open(str(folder / shard), "pt") as f:
                dtypes = {}
                for k in f.keys():
                    sl = f.get_slice(k)
                    shapes[k], dtypes[k] = tuple(sl.get_shape()), sl.get_dtype()
        except Exception as e:
            raise CheckpointError(f"{folder / shard}: not a readable safetensors file ({first_line(e)})") from None
        for k, dt in dtypes.items():
            if dt not in FLOAT_DTYPES:
                raise CheckpointError(f"{shard}: tensor {k!r} is stored as {dt}, expected a floating-point type "
                                      f"({', '.join(sorted(FLOAT_DTYPES))})")
    missing = sorted(set(wm) - set(shapes))
    if missing:
        raise CheckpointError(f"{INDEX_FILE} lists {len(missing)} keys absent from their shards, e.g. {missing[0]!r}")
    return shapes


def weights_name(shapes: dict) -> str:
    """How error messages name the weight files (set by :func:`load_checkpoint`)."""
    return getattr(shapes, "source", "the weights")


class Shapes(dict):
    """Tensor shapes that remember which files they came from (for error messages)."""

    source = "the weights"


# -- key names -------------------------------------------------------------------------------
def to_module_key(key: str) -> str:
    """Published key -> our module's key (LayerScale ``scale_factor`` -> timm ``gamma``)."""
    key = re.sub(r"\.(ls[12])\.scale_factor$", r".\1.gamma", key)
    if key.startswith("language_model.model."):
        key = "language_model." + key[len("language_model.model."):]
    return key


def to_published_key(key: str) -> str:
    key = re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", key)
    if key.startswith("language_model.") and not key.startswith("language_model.lm_head"):
        key = "language_model.model." + key[len("language_model."):]
    return key


# -- shapes -> args --------------------------------------------------------------------------
def _timm_defaults(timm_id: str) -> tuple[int, bool]:
    """(head_dim, no_embed_class) of the named timm model, read off a meta-device instance."""
    import timm

    try:
        with torch.device("meta"):
            m = timm.create_model(timm_id, pretrained=False, num_classes=0)
    except Exception as e:
        raise CheckpointError(f"config.json names timm model {timm_id!r}, which timm cannot build ({e})") from None
    return m.embed_dim // m.blocks[0].attn.num_heads, bool(getattr(m, "no_embed_class", False))


def _family(timm_id: str) -> str:
    return next((f for f in TIMM_HEAD_DIM if f in timm_id), "vit")


def derive_tower(timm_id: str, prefix: str, shapes: dict, mean=None, std=None) -> VisionTowerArgs:
    def shape(name: str) -> tuple[int, ...]:
        if prefix + name not in shapes:
            raise CheckpointError(f"{weights_name(shapes)}: no tensor {prefix + name!r}, needed to derive the "
                                  f"{timm_id} tower geometry")
        return shapes[prefix + name]

    if len(shape("patch_embed.proj.weight")) != 4:
        raise CheckpointError(f"{weights_name(shapes)}: {prefix}patch_embed.proj.weight has shape "
                              f"{shape('patch_embed.proj.weight')}, expected (width, 3, patch, patch)")
    width, _, patch, _ = shape("patch_embed.proj.weight")
    blocks = [k[len(prefix):].split(".")[1] for k in shapes if k.startswith(prefix + "blocks.")]
    if not blocks or not all(b.isdigit() for b in blocks):
        raise CheckpointError(f"{weights_name(shapes)}: no numbered {prefix}blocks.<i>.* tensors")
    depth = 1 + max(int(b) for b in blocks)
    class_token = prefix + "cls_token" in shapes
    reg_tokens = shapes[prefix + "reg_token"][1] if prefix + "reg_token" in shapes else 0
    head_dim, no_embed_class = _timm_defaults(timm_id)
    pos = shape("pos_embed")
    n_pos = pos[1] if len(pos) == 3 else 0
    n_patches = n_pos - (1 if class_token and not no_embed_class else 0)
    grid = math.isqrt(max(n_patches, 0))
    if n_patches < 1 or grid * grid != n_patches:
        raise CheckpointError(f"{weights_name(shapes)}: {prefix}pos_embed has shape {pos}: not a square patch grid")
    if width % head_dim:
        raise CheckpointError(f"{weights_name(shapes)}: {prefix} width {width} is not a multiple of {timm_id}'s "
                              f"head size {head_dim}")
    imagenet = _family(timm_id) == "dinov2"
    mean, std = mean or (IMAGENET_MEAN if imagenet else (0.5, 0.5, 0.5)), std or (IMAGENET_STD if imagenet else (0.5, 0.5, 0.5))
    for name, v in (("means", mean), ("stds", std)):
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(is_finite_number(x) for x in v)
                and (name == "means" or all(x > 0 for x in v))):
            raise CheckpointError(f"preprocessor_config.json: {name} entry {v!r} for {timm_id}, expected 3 finite "
                                  f"numbers{' > 0' if name == 'stds' else ''} (one per RGB channel)")
    return VisionTowerArgs(
        timm_id=timm_id, image_size=grid * patch, patch_size=patch, width=width, depth=depth,
        heads=width // head_dim, mlp_hidden=shape("blocks.0.mlp.fc1.weight")[0], reg_tokens=reg_tokens,
        class_token=class_token, layer_scale=prefix + "blocks.0.ls1.scale_factor" in shapes,
        mean=tuple(float(x) for x in mean), std=tuple(float(x) for x in std),
    )


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def positive_int(d: dict, key: str, where: str, default: Any = None) -> int:
    value = d.get(key, default)
    if value is None:
        raise CheckpointError(f"{where} lacks {key!r} (a positive integer)")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CheckpointError(f"{where}: {key!r} is {value!r}, expected a positive integer")
    return value


def _positive_float(d: dict, key: str, where: str, default: float) -> float:
    value = d.get(key, default)
    if not is_finite_number(value) or value <= 0:
        raise CheckpointError(f"{where}: {key!r} is {value!r}, expected a positive number")
    return float(value)


def derive_llm(text: dict, shapes: dict) -> LlamaArgs:
    where = "config.json text_config"
    if not isinstance(text, dict):
        raise CheckpointError(f"config.json: 'text_config' is a JSON {json_type(text)}, expected an object")
    heads = positive_int(text, "num_attention_heads", where)
    try:
        args = LlamaArgs(
            dim=positive_int(text, "hidden_size", where), n_layers=positive_int(text, "num_hidden_layers", where),
            n_heads=heads, n_kv_heads=positive_int(text, "num_key_value_heads", where, heads) if
            text.get("num_key_value_heads") is not None else heads,
            ffn_dim=positive_int(text, "intermediate_size", where), vocab_size=positive_int(text, "vocab_size", where),
            rms_eps=_positive_float(text, "rms_norm_eps", where, 1e-6),
            rope_theta=_positive_float(text, "rope_theta", where, 10000.0),
        )
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where}: {e}") from None
    layers = [k.split(".")[3] for k in shapes if k.startswith("language_model.model.layers.")]
    n_stored = 1 + max((int(i) for i in layers if i.isdigit()), default=-1)
    if n_stored != args.n_layers:
        raise CheckpointError(f"config.json says {args.n_layers} decoder layers, {weights_name(shapes)} hold {n_stored}")
    if text.get("rope_scaling"):
        raise CheckpointError(f"config.json: rope_scaling {text['rope_scaling']!r} is not supported (OpenVLA uses none)")
    return args


def _side_shape(state: dict, key: str, kind: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{getattr(state, 'source', kind)}: missing key {key!r}")
    return tuple(state[key].shape)


def derive_prismatic(config: dict, shapes: dict, preprocessor: dict | None = None,
                     ) -> tuple[tuple[VisionTowerArgs, ...], tuple[int, ...]]:
    """The Prismatic backbone both families share: the vision towers (``timm_model_ids``, fused or not,
    their pixel statistics from ``preprocessor_config.json``, checked against ``image_sizes``) and the
    projector's hidden widths, from ``config.json`` and the weights' shapes."""
    ids = config.get("timm_model_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise CheckpointError(f"config.json: 'timm_model_ids' is {ids!r}, expected a list of timm model names")
    fused = config.get("use_fused_vision_backbone", len(ids) > 1)
    if not isinstance(fused, bool):
        raise CheckpointError(f"config.json: 'use_fused_vision_backbone' is {fused!r}, expected true or false")
    ids = ids[:2] if fused else ids[:1]
    pre = preprocessor or {}
    means, stds = pre.get("means") or [None] * len(ids), pre.get("stds") or [None] * len(ids)
    if not (isinstance(means, list) and isinstance(stds, list) and len(means) >= len(ids) and len(stds) >= len(ids)):
        raise CheckpointError(f"preprocessor_config.json: 'means' and 'stds' must be lists with one entry per vision "
                              f"tower ({len(ids)}), got {means!r} and {stds!r}")
    towers = tuple(derive_tower(t, p, shapes, m, s) for t, p, m, s in zip(ids, TOWER_PREFIXES, means, stds))
    sizes = config.get("image_sizes")
    if sizes is not None and (not isinstance(sizes, list) or not all(is_finite_number(s) for s in sizes)
                              or any(int(s) != t.image_size for s, t in zip(sizes, towers))):
        raise CheckpointError(f"config.json image_sizes {sizes!r} disagree with {weights_name(shapes)}' "
                              f"{[t.image_size for t in towers]}")
    fcs = [k.split(".")[1][2:] for k in shapes if k.startswith("projector.fc") and k.endswith(".weight")]
    n_fc = max((int(i) for i in fcs if i.isdigit()), default=0)
    if n_fc < 2 or any(f"projector.fc{i}.weight" not in shapes for i in range(1, n_fc)):
        raise CheckpointError(f"{weights_name(shapes)} lack the projector ('projector.fc1.weight', "
                              "'projector.fc2.weight', ...)")
    return towers, tuple(shapes[f"projector.fc{i}.weight"][0] for i in range(1, n_fc))


def derive_args(config: dict, shapes: dict, head: dict | None, proprio: dict | None, platform: Platform,
                preprocessor: dict | None = None, n_images: int | None = None) -> OFTArgs:
    towers, proj_hidden = derive_prismatic(config, shapes, preprocessor)
    llm = derive_llm(config.get("text_config") or {}, shapes)
    head_hidden, head_blocks, action_dim = 4096, 2, platform.action_dim
    if head is not None:
        head_hidden = _side_shape(head, "model.fc1.weight", "action_head")[0]
        head_blocks = len({k.split(".")[2] for k in head if k.startswith("model.mlp_resnet_blocks.")})
        action_dim = _side_shape(head, "model.fc2.weight", "action_head")[0]
    proprio_dim = _side_shape(proprio, "fc1.weight", "proprio_projector")[1] if proprio is not None else platform.proprio_dim
    if (action_dim, proprio_dim) != (platform.action_dim, platform.proprio_dim):
        raise CheckpointError(
            f"platform {platform.name!r} expects action_dim {platform.action_dim} and proprio_dim "
            f"{platform.proprio_dim}, the side modules have {action_dim} and {proprio_dim}"
        )
    try:
        return OFTArgs(
            towers=towers, llm=llm, projector_hidden=proj_hidden, proprio_dim=proprio_dim, action_dim=action_dim,
            chunk=platform.chunk, head_hidden=head_hidden, head_blocks=head_blocks,
            n_images=n_images or positive_int(config, "num_images_in_input", "config.json", 2),
            use_proprio=proprio is not None,
            pad_to_multiple_of=positive_int(config, "pad_to_multiple_of", "config.json", 64),
            n_action_bins=positive_int(config, "n_action_bins", "config.json", 256),
        )
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"config.json and {weights_name(shapes)} describe no valid model: {e}") from None


def check_norm_stats(stats: dict, platform: Platform, use_proprio: bool, path: Path | str) -> None:
    """Every dataset entry of ``dataset_statistics.json`` holds what un-normalising actions (and, with a
    proprio projector, normalising the state) reads: the platform's bounds (``q01``/``q99`` or
    ``min``/``max``) as finite numbers of the right length, and an optional boolean ``mask``."""
    lo, hi = ("q01", "q99") if platform.normalization == "bounds_q99" else ("min", "max")
    if not stats:
        raise CheckpointError(f"{path}: no dataset entries")
    for dataset, entry in stats.items():
        where = f"{path}: dataset {dataset!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where} is a JSON {json_type(entry)}, expected an object with 'action'")
        parts = [("action", platform.action_dim)] + ([("proprio", platform.proprio_dim)] if use_proprio else [])
        for part, dim in parts:
            block = entry.get(part)
            if not isinstance(block, dict):
                raise CheckpointError(f"{where} has no {part!r} object (found {json_type(block)}), expected one with "
                                      f"{lo!r} and {hi!r} ({dim} numbers each, platform {platform.name!r})")
            for key in (lo, hi):
                v = block.get(key)
                if not (isinstance(v, list) and len(v) == dim and all(is_finite_number(x) for x in v)):
                    found = f"{len(v)} values" if isinstance(v, list) else f"a JSON {json_type(v)}"
                    raise CheckpointError(f"{where}: {part}.{key} is {found}" + (
                        " with a non-number or non-finite value" if isinstance(v, list) and len(v) == dim else "")
                        + f", expected {dim} finite numbers ({part} dimension of platform {platform.name!r})")
            if "mask" in block:
                m = block["mask"]
                if not (isinstance(m, list) and len(m) == dim and all(isinstance(x, bool) for x in m)):
                    raise CheckpointError(f"{where}: {part}.mask is {str(m)[:60]}, expected {dim} booleans")


# -- strict state loading ----------------------------------------------------------------------
def verify_state(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str,
            files: dict[str, str] | None = None) -> None:
    """Strict: same keys, same shapes; the first problem is named with its published key (and the
    file holding it, from ``files``: published key -> file name)."""
    def where(key: str) -> str:
        return (files or {}).get(key, source)

    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{source}: missing key {to_published_key(missing[0])!r} ({len(missing)} missing in all)")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        key = to_published_key(unexpected[0])
        raise CheckpointError(f"{where(key)}: unexpected key {key!r} ({len(unexpected)} in all)")
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            key = to_published_key(k)
            raise CheckpointError(f"{where(key)}: key {key!r} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}")


def _check_and_assign(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    verify_state(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True, assign=True)


def load_main_state(folder: Path, wm: dict[str, str], dtype, device) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(set(wm.values())):
        try:
            with safe_open(str(folder / shard), "pt", device=str(device)) as f:
                for k in f.keys():
                    t = f.get_tensor(k)
                    _check_tensor(t, k, shard)
                    state[to_module_key(k)] = t.to(dtype)
        except CheckpointError:
            raise
        except Exception as e:  # a data region cut short, ...
            raise CheckpointError(f"{folder / shard}: cannot read the tensors ({first_line(e)})") from None
    return state


def resolve_unnorm_key(stats: dict, key: str | None, lenient: bool = False) -> str:
    """OFT's rule: ``key`` or ``<key>_no_noops``; ``None`` takes the only key.

    ``lenient`` adds the reference ADP fallbacks (any key containing ``key``, else the only key).
    """
    if key is None:
        if len(stats) == 1:
            return next(iter(stats))
        raise CheckpointError(f"dataset_statistics.json has several datasets {sorted(stats)}: choose one with unnorm_key")
    for cand in (key, f"{key}_no_noops"):
        if cand in stats:
            return cand
    if lenient:
        hits = [k for k in stats if key in k]
        if hits or len(stats) == 1:
            chosen = (hits or list(stats))[0]
            warnings.warn(f"unnorm_key {key!r} not found; falling back to {chosen!r} (reference ADP rule)")
            return chosen
    raise CheckpointError(f"unnorm_key {key!r} (or {key}_no_noops) not in dataset_statistics.json: {sorted(stats)}")


def load_checkpoint(
    path: str | Path,
    platform: str | Platform | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    n_images: int | None = None,
    require_action_head: bool = True,
) -> Checkpoint:
    """Build the model from a published-layout folder on the meta device and load it strictly.

    Args:
        platform: chunk/action/proprio shapes; default: recorded by our writers, else LIBERO.
        n_images: camera views per query; default ``num_images_in_input`` of the config, else 2.
        require_action_head: raise if no ``action_head--*.pt`` (set False for discrete decoding).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config = read_checkpoint_json(folder / "config.json")
    platform = platform_of(config, platform)
    stats_file = folder / "dataset_statistics.json"
    stats = read_checkpoint_json(stats_file)
    for unsupported, what in (("vision_backbone--", "FiLM (OFT+)"), ("noisy_action_projector--", "diffusion-head")):
        if any(unsupported in p.name for p in folder.glob("*.pt")):
            raise CheckpointError(f"{folder}: {what} checkpoints are not supported (found '{unsupported}*.pt')")
    head_file = _find_side_file(folder, "action_head", require_action_head)
    proprio_file = _find_side_file(folder, "proprio_projector", False)
    head = _load_side_state(head_file) if head_file else None
    proprio = _load_side_state(proprio_file) if proprio_file else None
    wm = weight_map(folder)
    shapes = Shapes(read_shapes(folder, wm))
    shards = sorted(set(wm.values()))
    shapes.source = shards[0] if len(shards) == 1 else f"the weight shards {shards}"
    pre_file = folder / "preprocessor_config.json"
    pre = read_checkpoint_json(pre_file) if pre_file.is_file() else None
    args = derive_args(config, shapes, head, proprio, platform, pre, n_images)
    check_norm_stats(stats, platform, args.use_proprio, stats_file)
    tok = check_tokenizer(folder / "tokenizer.model", args.llm.vocab_size)
    try:
        with torch.device("meta"):
            model = OpenVLAOFT(args, with_action_head=head is not None)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"config.json and {shapes.source} describe no buildable model ({first_line(e)})") from None
    main = load_main_state(folder, wm, dtype, device)
    _check_main(model, main, shapes.source, wm)
    if head is not None:
        _check_and_assign(model.action_head, _to(head, dtype, device), head_file.name)
    if proprio is not None:
        _check_and_assign(model.proprio_projector, _to(proprio, dtype, device), proprio_file.name)
    _materialise_buffers(model, device)
    return Checkpoint(model.eval(), args, folder, config, stats, tok, platform)


def check_tokenizer(path: Path, vocab_size: int) -> Path:
    """A readable SentencePiece model with the OFT prompt pieces, no larger than the embedding."""
    from vla_adp.model.tokenizer import PromptTokenizer

    if not path.is_file():
        raise CheckpointError(f"missing file {path.name} in {path.parent}")
    try:
        tok = PromptTokenizer(path)
    except ValueError as e:
        raise CheckpointError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    if tok.vocab_size > vocab_size:
        raise CheckpointError(f"{path}: {tok.vocab_size} pieces, more than the {vocab_size} rows of the model's "
                              "embedding (config.json text_config.vocab_size): another model's tokenizer?")
    return path


def _check_main(model: OpenVLAOFT, state: dict, source: str, files: dict[str, str]) -> None:
    side = ("action_head.", "proprio_projector.")
    main_modules = {k: v for k, v in model.state_dict().items() if not k.startswith(side)}
    verify_state(main_modules, state, source, files)
    model.load_state_dict(state, strict=False, assign=True)


def _to(state: dict, dtype, device) -> dict:
    return {k: v.to(device=device, dtype=dtype) for k, v in state.items()}


def _materialise_buffers(model: torch.nn.Module, device) -> None:
    """Non-persistent buffers stay on meta after ``assign``; rebuild any (none in OFT today)."""
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:
            raise CheckpointError(f"buffer {name!r} was not materialised by the loader")


# -- writing ---------------------------------------------------------------------------------
def published_config(args: OFTArgs, platform: Platform | None = None, center_crop: bool | None = None,
                     hints: dict | None = None) -> dict:
    """``config.json`` in the published layout; our writers add a ``vla_adp`` section with the
    platform, the center-crop flag and ``hints`` (e.g. the renderer and camera size the policy was
    trained with, read by ``vla-adp eval`` as defaults)."""
    llm = args.llm
    fused = len(args.towers) > 1
    cfg = {
        "model_type": "openvla",
        "architectures": ["OpenVLAForActionPrediction"],
        "torch_dtype": "bfloat16",
        "vision_backbone_id": "dinosiglip-vit-so-224px" if fused else args.towers[0].timm_id,
        "llm_backbone_id": "llama2-7b-pure",
        "arch_specifier": "no-align+fused-gelu-mlp" if len(args.projector_hidden) == 2 else "no-align+gelu-mlp",
        "use_fused_vision_backbone": fused,
        "timm_model_ids": [t.timm_id for t in args.towers],
        "timm_override_act_layers": [None] * len(args.towers),
        "image_sizes": [t.image_size for t in args.towers],
        "image_resize_strategy": "resize-naive",
        "hf_llm_id": "meta-llama/Llama-2-7b-hf",
        "llm_max_length": 2048,
        "pad_token_id": llm.vocab_size - args.pad_to_multiple_of,
        "pad_to_multiple_of": args.pad_to_multiple_of,
        "n_action_bins": args.n_action_bins,
        "output_projector_states": False,
        "text_config": {
            "model_type": "llama", "hidden_size": llm.dim, "intermediate_size": llm.ffn_dim,
            "num_hidden_layers": llm.n_layers, "num_attention_heads": llm.n_heads,
            "num_key_value_heads": llm.n_kv_heads, "hidden_act": "silu", "vocab_size": llm.vocab_size,
            "rms_norm_eps": llm.rms_eps, "rope_theta": llm.rope_theta, "rope_scaling": None,
            "attention_bias": False, "tie_word_embeddings": False, "max_position_embeddings": 2048,
            "pad_token_id": llm.vocab_size - args.pad_to_multiple_of,
        },
    }
    cfg["num_images_in_input"] = args.n_images
    if platform is not None or center_crop is not None or hints:
        # Not in the published configs: our own writers record what loading would otherwise need as flags.
        ours: dict[str, Any] = {}
        if platform is not None:
            ours["platform"] = {"name": platform.name, "chunk": platform.chunk, "action_dim": platform.action_dim,
                                "proprio_dim": platform.proprio_dim, "normalization": platform.normalization,
                                "eef_pos": list(platform.eef_pos) if platform.eef_pos else None,
                                "eef_rot": list(platform.eef_rot) if platform.eef_rot else None}
        if center_crop is not None:
            ours["center_crop"] = bool(center_crop)
        ours.update(hints or {})
        cfg["vla_adp"] = ours
    return cfg


def platform_of(config: dict, platform: str | Platform | None) -> Platform:
    """An explicit platform wins; else the one our writers record; else LIBERO (the published checkpoints)."""
    ours = config.get("vla_adp")
    if ours is not None and not isinstance(ours, dict):
        raise CheckpointError(f"config.json: 'vla_adp' is a JSON {json_type(ours)}, expected an object")
    if not isinstance((ours or {}).get("center_crop", True), bool):
        raise CheckpointError(f"config.json: vla_adp.center_crop is {ours['center_crop']!r}, expected true or false")
    if platform is not None:
        return get_platform(platform)
    rec = (ours or {}).get("platform")
    if not rec:
        return get_platform("libero")
    if not isinstance(rec, dict):
        raise CheckpointError(f"config.json: vla_adp.platform is {rec!r}, expected an object")
    try:
        eef = tuple(rec["eef_pos"]) if rec.get("eef_pos") else None
        rot = tuple(rec["eef_rot"]) if rec.get("eef_rot") else None
        return Platform(rec["name"], int(rec["chunk"]), int(rec["action_dim"]), int(rec["proprio_dim"]),
                        rec.get("normalization", "bounds_q99"), eef, rot)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"config.json vla_adp.platform is malformed ({e}): {rec!r}") from None


def preprocessor_config(args: OFTArgs) -> dict:
    return {
        "image_processor_type": "PrismaticImageProcessor",
        "use_fused_vision_backbone": len(args.towers) > 1,
        "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, t.image_size, t.image_size] for t in args.towers],
        "interpolations": ["bicubic"] * len(args.towers),
        "means": [list(t.mean) for t in args.towers],
        "stds": [list(t.std) for t in args.towers],
    }


def save_checkpoint(
    model: OpenVLAOFT,
    folder: str | Path,
    norm_stats: dict,
    tokenizer_file: str | Path,
    step: int = 0,
    max_shard_bytes: int = 5 * 2**30,
    dtype: torch.dtype = torch.bfloat16,
    platform: Platform | None = None,
    center_crop: bool | None = None,
    hints: dict | None = None,
) -> Path:
    """Write ``model`` as a published-layout folder (side ``.pt`` keys get a ``module.`` prefix);
    side files of an earlier save into the same folder are replaced."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    side = ("action_head.", "proprio_projector.")
    state = {to_published_key(k): v.detach().to(dtype).contiguous().cpu()
             for k, v in model.state_dict().items() if not k.startswith(side)}
    write_shards(folder, state, max_shard_bytes)
    for name, module in (("action_head", model.action_head), ("proprio_projector", model.proprio_projector)):
        for old in folder.glob(f"{name}--*_checkpoint.pt"):  # re-saving at a new step: the loader wants one
            old.unlink()
        if module is not None:
            sd = {f"module.{k}": v.detach().to(dtype).cpu() for k, v in module.state_dict().items()}
            torch.save(sd, folder / f"{name}--{step}_checkpoint.pt")
    (folder / "config.json").write_text(json.dumps(published_config(model.args, platform, center_crop, hints), indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(model.args), indent=2))
    (folder / "dataset_statistics.json").write_text(json.dumps(norm_stats, indent=2))
    (folder / "tokenizer.model").write_bytes(Path(tokenizer_file).read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                             "padding_side": "right", "pad_token": "<PAD>"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                               "unk_token": "<unk>", "pad_token": "<PAD>"}))
    return folder


def write_shards(folder: Path, state: dict[str, torch.Tensor], max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    n = len(shards)
    wm = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        wm.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": wm}, indent=2))
