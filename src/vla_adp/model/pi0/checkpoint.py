"""Read and write π0 / π0.5 folders in LeRobot's hub layout (e.g. ``lerobot/pi05_libero_finetuned``).

    config.json                     PI05Config / PI0Config fields ("type": "pi05" | "pi0", variants,
                                    chunk_size, max_*_dim, image_resolution, empty_cameras, features …)
    model.safetensors               the policy's state dict (keys with or without a leading "model.")
    policy_preprocessor.json        processor steps; the "normalizer_processor" step names its state file
    policy_preprocessor_step_<i>_normalizer_processor.safetensors    "<feature>.<stat>" tensors
    policy_postprocessor.json       idem, "unnormalizer_processor"
    policy_postprocessor_step_<i>_unnormalizer_processor.safetensors

(LeRobot ``policies/pi05/modeling_pi05.py::PI05Policy.from_pretrained`` and
``processor/pipeline.py::DataProcessorPipeline.save_pretrained``.) Shapes come from the variant names
(openpi ``models/gemma.py``); a folder written by :func:`save_pi0_checkpoint` for a non-published
shape also carries ``vla_adp.json`` with the three towers' shapes — LeRobot ignores that file. The
prompt tokenizer (PaliGemma's, gated on the Hub) is not part of the layout; the tiny maker adds a
small ``tokenizer.model`` so that tests run offline.

Loading is strict: a missing file or key, an unexpected key, or a shape mismatch raises
:class:`CheckpointError` naming the file, the published key, the expected and the found shape.
Two keys are read but not used, as in LeRobot: ``paligemma.lm_head.weight`` (tied to the token
embeddings, which it replaces if those are absent) and ``gemma_expert.lm_head.weight`` (the expert
emits no tokens).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vla_adp.model.checkpoint import CheckpointError
from vla_adp.model.pi0.config import FAMILIES, GEMMA_VARIANTS, GemmaArgs, Pi0Args, SiglipArgs, published_args
from vla_adp.model.pi0.pi0 import Pi0Model

WEIGHTS = "model.safetensors"
SHAPES_FILE = "vla_adp.json"
PRE, POST = "policy_preprocessor", "policy_postprocessor"
NORMALIZER, UNNORMALIZER = "normalizer_processor", "unnormalizer_processor"

# published prefix -> our module's prefix (everything else is named alike)
KEY_PREFIXES = (
    ("paligemma_with_expert.paligemma.model.vision_tower.vision_model.", "vision."),
    ("paligemma_with_expert.paligemma.model.multi_modal_projector.linear.", "projector."),
    ("paligemma_with_expert.paligemma.model.language_model.", "vlm."),
    ("paligemma_with_expert.gemma_expert.model.", "expert."),
)
TIED_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
UNUSED = (TIED_HEAD, "paligemma_with_expert.gemma_expert.lm_head.weight")


@dataclass
class Pi0Checkpoint:
    """A loaded folder: the model plus what the processors need."""

    model: Pi0Model
    args: Pi0Args
    path: Path
    config: dict[str, Any]
    norm_map: dict[str, str]  # feature type (VISUAL/STATE/ACTION) -> mode (IDENTITY/MEAN_STD/QUANTILES/…)
    features: dict[str, dict[str, Any]]  # input + output features: key -> {type, shape}
    stats: dict[str, dict[str, torch.Tensor]]  # feature key -> {mean, std, q01, q99, …} (postprocessor's
    # for the action, preprocessor's for the inputs)
    tokenizer_file: Path | None


# -- key names -------------------------------------------------------------------------------
def to_module_key(key: str) -> str:
    for published, ours in KEY_PREFIXES:
        if key.startswith(published):
            return ours + key[len(published):]
    return key


def to_published_key(key: str) -> str:
    for published, ours in KEY_PREFIXES:
        if key.startswith(ours):
            return published + key[len(ours):]
    return key


# -- small readers ---------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"missing file {path.name} in {path.parent}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"missing file {path.name} in {path.parent}")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def _field(config: dict, name: str, kind: type | tuple[type, ...], source: str = "config.json"):
    if name not in config:
        raise CheckpointError(f"{source} lacks {name!r}")
    value = config[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise CheckpointError(f"{source}: {name!r} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


# -- config -> args --------------------------------------------------------------------------
def _variant(config: dict, name: str) -> GemmaArgs:
    value = _field(config, name, str)
    if value not in GEMMA_VARIANTS:
        raise CheckpointError(f"config.json: {name} {value!r} is not one of {sorted(GEMMA_VARIANTS)}")
    return GEMMA_VARIANTS[value]


def _cameras(config: dict) -> int:
    visual = [k for k, f in _field(config, "input_features", dict).items() if isinstance(f, dict) and f.get("type") == "VISUAL"]
    n = len(visual) + int(config.get("empty_cameras", 0))
    if n < 1:
        raise CheckpointError("config.json: input_features name no VISUAL feature and empty_cameras is 0")
    return n


def args_from_config(config: dict, shapes: dict | None = None) -> Pi0Args:
    """Pi0Args from LeRobot's config.json (+ the optional ``vla_adp.json`` tower shapes)."""
    family = _field(config, "type", str)
    if family not in FAMILIES:
        raise CheckpointError(f"config.json: type {family!r} is not one of {FAMILIES}")
    side = _field(config, "image_resolution", list)
    if len(side) != 2 or side[0] != side[1]:
        raise CheckpointError(f"config.json: image_resolution must be square [S, S], got {side!r}")
    vision, vlm, expert = SiglipArgs(image_size=side[0]), _variant(config, "paligemma_variant"), _variant(
        config, "action_expert_variant")
    if shapes is not None:
        try:
            vision, vlm, expert = SiglipArgs(**shapes["vision"]), GemmaArgs(**shapes["vlm"]), GemmaArgs(**shapes["expert"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{SHAPES_FILE}: malformed tower shapes ({e})") from None
    base = published_args(family)
    try:
        return replace(
            base, vision=vision, vlm=vlm, expert=expert, vocab_size=int(shapes.get("vocab_size", base.vocab_size))
            if shapes else base.vocab_size,
            chunk_size=_field(config, "chunk_size", int), max_action_dim=_field(config, "max_action_dim", int),
            max_state_dim=_field(config, "max_state_dim", int), num_steps=_field(config, "num_inference_steps", int),
            min_period=float(config.get("min_period", base.min_period)),
            max_period=float(config.get("max_period", base.max_period)), n_cameras=_cameras(config),
            tokenizer_max_length=_field(config, "tokenizer_max_length", int),
        )
    except ValueError as e:
        raise CheckpointError(f"config.json: {e}") from None


# -- processors ------------------------------------------------------------------------------
def _processor_state(folder: Path, pipeline: str, step_name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(step config, its tensors) of the step registered as ``step_name`` in ``<pipeline>.json``."""
    spec = _read_json(folder / f"{pipeline}.json")
    steps = spec.get("steps") if isinstance(spec, dict) else None
    if not isinstance(steps, list):
        raise CheckpointError(f"{pipeline}.json: no 'steps' list")
    found = [s for s in steps if isinstance(s, dict) and s.get("registry_name") == step_name]
    if len(found) != 1:
        raise CheckpointError(f"{pipeline}.json: expected one '{step_name}' step, found {len(found)}")
    step = found[0]
    if "state_file" not in step:
        raise CheckpointError(f"{pipeline}.json: the '{step_name}' step names no state_file")
    return step.get("config", {}), _read_safetensors(folder / step["state_file"])


def _group_stats(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """``{"observation.state.q01": t}`` -> ``{"observation.state": {"q01": t}}``."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        feature, _, stat = key.rpartition(".")
        out.setdefault(feature, {})[stat] = value.float()
    return out


NEEDED_STATS = {"MEAN_STD": ("mean", "std"), "QUANTILES": ("q01", "q99"), "QUANTILE10": ("q10", "q90"),
                "MIN_MAX": ("min", "max"), "IDENTITY": ()}


def _check_stats(stats: dict, features: dict, norm_map: dict, source: str) -> None:
    for key, feature in features.items():
        mode = norm_map.get(feature.get("type"), "IDENTITY")
        if mode not in NEEDED_STATS:
            raise CheckpointError(f"{source}: normalisation mode {mode!r} of {key} is not one of {sorted(NEEDED_STATS)}")
        for stat in NEEDED_STATS[mode]:
            if stat not in stats.get(key, {}):
                raise CheckpointError(f"{source}: missing key '{key}.{stat}' ({mode} normalisation of {key})")
            found, want = tuple(stats[key][stat].shape), tuple(feature["shape"])
            if found != want:
                raise CheckpointError(f"{source}: key '{key}.{stat}' has shape {found}, expected {want}")


def _check_widths(features: dict, args: Pi0Args) -> None:
    """The dataset's state / action must fit the model's padded widths."""
    for key, kind, width, name in (("observation.state", "STATE", args.max_state_dim, "max_state_dim"),
                                   ("action", "ACTION", args.max_action_dim, "max_action_dim")):
        feature = features.get(key)
        if not isinstance(feature, dict) or feature.get("type") != kind or not isinstance(feature.get("shape"), list):
            raise CheckpointError(f"config.json: features lack {key!r} of type {kind} with a shape list")
        if feature["shape"][0] > width:
            raise CheckpointError(f"config.json: {key} has {feature['shape'][0]} values, more than {name} {width}")


# -- weights ---------------------------------------------------------------------------------
def _weights(folder: Path) -> dict[str, torch.Tensor]:
    raw = _read_safetensors(folder / WEIGHTS)
    prefixed = [k.startswith("model.") for k in raw]
    if any(prefixed) and not all(prefixed):
        raise CheckpointError(f"{WEIGHTS}: keys mix the policy's 'model.' prefix and bare keys "
                              f"(e.g. {next(k for k in raw if not k.startswith('model.'))!r})")
    return {(k[len("model."):] if k.startswith("model.") else k): v for k, v in raw.items()}


def _verify(model: Pi0Model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strict: same keys and shapes as the model; the first problem is named with its published key."""
    state = dict(state)
    embed = "vlm.embed_tokens.weight"
    if to_published_key(embed) not in state and TIED_HEAD in state:
        state[to_published_key(embed)] = state[TIED_HEAD]
    for key in UNUSED:
        state.pop(key, None)
    ours = {to_module_key(k): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(ours))
    if missing:
        raise CheckpointError(f"{WEIGHTS}: missing key {to_published_key(missing[0])!r} ({len(missing)} missing in all)")
    unexpected = sorted(set(ours) - set(expected))
    if unexpected:
        raise CheckpointError(f"{WEIGHTS}: unexpected key {to_published_key(unexpected[0])!r} ({len(unexpected)} in all)")
    for k, v in sorted(ours.items()):
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{WEIGHTS}: key {to_published_key(k)!r} has shape {tuple(v.shape)}, "
                                  f"expected {tuple(expected[k].shape)}")
    return ours


# What LeRobot keeps in float32 when the policy runs in bfloat16 (``PaliGemmaWithExpertModel.
# to_bfloat16_for_selected_params``; the action/time heads are outside that module and stay float32).
FLOAT32_IN_BF16 = ("vision.", "projector.", "action_in_proj.", "action_out_proj.", "time_mlp_", "state_proj.",
                   "action_time_mlp_")


def keeps_float32(key: str) -> bool:
    return key.startswith(FLOAT32_IN_BF16) or any(
        f".{n}." in f".{key}" for n in ("input_layernorm", "post_attention_layernorm", "norm"))


def load_pi0_checkpoint(folder: str | Path, dtype: torch.dtype = torch.float32, device: str = "cpu",
                        lerobot_mixed: bool = False) -> Pi0Checkpoint:
    """Load a folder strictly. ``dtype`` for every weight, or with ``lerobot_mixed`` only for the
    Gemma layers (vision, projector, norms and action/time heads stay float32, as LeRobot's bf16)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    config = _read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{folder / 'config.json'}: expected a JSON object")
    shapes = _read_json(folder / SHAPES_FILE) if (folder / SHAPES_FILE).is_file() else None
    args = args_from_config(config, shapes)
    features = {**_field(config, "input_features", dict), **_field(config, "output_features", dict)}
    _check_widths(features, args)
    norm_map = _field(config, "normalization_mapping", dict)
    _, pre = _processor_state(folder, PRE, NORMALIZER)
    _, post = _processor_state(folder, POST, UNNORMALIZER)
    stats = {**_group_stats(pre), **_group_stats(post)}
    _check_stats(_group_stats(pre), {k: f for k, f in features.items() if f.get("type") == "STATE"}, norm_map,
                 f"{PRE} state file")
    _check_stats(_group_stats(post), {k: f for k, f in features.items() if f.get("type") == "ACTION"}, norm_map,
                 f"{POST} state file")
    with torch.device("meta"):
        model = Pi0Model(args)
    state = _verify(model, _weights(folder))
    model.load_state_dict({k: v.to(device=device, dtype=torch.float32 if lerobot_mixed and keeps_float32(k) else dtype)
                           for k, v in state.items()}, strict=True, assign=True)
    tokenizer = folder / "tokenizer.model"
    return Pi0Checkpoint(model.eval(), args, folder, config, norm_map, features, stats,
                         tokenizer if tokenizer.is_file() else None)


# -- writing ---------------------------------------------------------------------------------
def lerobot_config(args: Pi0Args, state_dim: int, action_dim: int, cameras: tuple[str, ...],
                   norm_map: dict[str, str], n_action_steps: int) -> dict:
    """config.json fields as LeRobot writes them (those this loader reads, plus the protocol's)."""
    side = args.vision.image_size
    inputs = {f"observation.images.{c}": {"type": "VISUAL", "shape": [3, side, side]} for c in cameras}
    inputs["observation.state"] = {"type": "STATE", "shape": [state_dim]}
    variant = {v: k for k, v in GEMMA_VARIANTS.items()}
    return {
        "type": args.family, "n_obs_steps": 1, "input_features": inputs,
        "output_features": {"action": {"type": "ACTION", "shape": [action_dim]}},
        "paligemma_variant": variant.get(args.vlm, "gemma_2b"), "action_expert_variant": variant.get(args.expert, "gemma_300m"),
        "dtype": "float32", "chunk_size": args.chunk_size, "n_action_steps": n_action_steps,
        "max_state_dim": args.max_state_dim, "max_action_dim": args.max_action_dim,
        "num_inference_steps": args.num_steps, "min_period": args.min_period, "max_period": args.max_period,
        "image_resolution": [side, side], "empty_cameras": args.n_cameras - len(cameras),
        "tokenizer_max_length": args.tokenizer_max_length, "normalization_mapping": dict(norm_map),
    }


# The steps of LeRobot's pi05 pipelines (``policies/pi05/processor_pi05.py``); only the
# (un)normaliser carries state, the others are listed so that the folder reads like LeRobot's.
PRE_STEPS = ("rename_observations_processor", "to_batch_processor", "relative_actions_processor", NORMALIZER,
             "pi05_prepare_state_tokenizer_processor_step", "tokenizer_processor", "device_processor")
POST_STEPS = (UNNORMALIZER, "absolute_actions_processor", "device_processor")


def _pipeline(name: str, steps: tuple[str, ...], stateful: str, features: dict, norm_map: dict) -> dict:
    out = []
    for i, step in enumerate(steps):
        entry: dict[str, Any] = {"registry_name": step, "config": {}}
        if step == stateful:
            entry["config"] = {"eps": 1e-8, "features": features, "norm_map": norm_map}
            entry["state_file"] = f"{name}_step_{i}_{step}.safetensors"
        out.append(entry)
    return {"name": name, "steps": out}


def save_pi0_checkpoint(model: Pi0Model, folder: str | Path, config: dict, stats: dict[str, dict[str, torch.Tensor]],
                        tokenizer_file: str | Path | None = None) -> Path:
    """Write ``model`` in LeRobot's layout (policy keys with the "model." prefix, as ``save_pretrained``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {"model." + to_published_key(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if GEMMA_VARIANTS.get(config["paligemma_variant"]) != model.args.vlm or GEMMA_VARIANTS.get(
            config["action_expert_variant"]) != model.args.expert or model.args.vision != SiglipArgs(
            image_size=model.args.vision.image_size):
        shapes = {"vision": asdict(model.args.vision), "vlm": asdict(model.args.vlm), "expert": asdict(model.args.expert),
                  "vocab_size": model.args.vocab_size}
        (folder / SHAPES_FILE).write_text(json.dumps(shapes, indent=2))
    for pipeline, steps, stateful, kind in ((PRE, PRE_STEPS, NORMALIZER, "STATE"), (POST, POST_STEPS, UNNORMALIZER, "ACTION")):
        features = {k: f for k, f in {**config["input_features"], **config["output_features"]}.items()
                    if f["type"] == kind}
        flat = {f"{k}.{s}": t.float().contiguous() for k in features for s, t in stats.get(k, {}).items()}
        spec = _pipeline(pipeline, steps, stateful, features, config["normalization_mapping"])
        state_file = next(s["state_file"] for s in spec["steps"] if "state_file" in s)
        save_file(flat, str(folder / state_file))
        (folder / f"{pipeline}.json").write_text(json.dumps(spec, indent=2))
    if tokenizer_file is not None:
        (folder / "tokenizer.model").write_bytes(Path(tokenizer_file).read_bytes())
    return folder
