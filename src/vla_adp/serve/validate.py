"""Request validation for the policy server: every bad input becomes a :class:`RequestError`.

The accepted body is OpenVLA-OFT's ``deploy.py`` observation (moojink/openvla-oft ``vla-scripts/deploy.py``): ``full_image`` and the
wrist images (any key containing "wrist") as json-numpy uint8 arrays (H, W, 3), ``state`` (raw
proprio), ``instruction`` (``task_description`` is accepted as its alias, as the OFT sample
observation uses it), or ``{"encoded": <that dict as a JSON string>}``. Our additions, all optional:
``session_id`` (also the ``X-Session-Id`` header), ``return_info`` and ``trajectory`` (the raw states
recorded after every executed step since the previous query, for path-length gating).

Unlike ``deploy.py``, which answers any failure with the string "error", every check here names the
field, what it got and what it expects.

Every public function is pure and transport-free: it takes decoded values (or body bytes) and returns
the checked value or raises :class:`RequestError` (``status``, ``error``, ``expected``; ``body()`` is
the JSON answer), so any server (HTTP here, a websocket one elsewhere) reuses them: :func:`parse_json`
(bytes -> dict with json-numpy arrays decoded), :func:`check_act` (a whole observation + options),
:func:`check_image`, :func:`check_state`, :func:`check_instruction`, :func:`check_trajectory`,
:func:`session_id`, :func:`flag`, with the limits in :class:`ObsSpec`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_adp.serve import numpy_json

SESSION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SESSION_EXPECTED = "a session id of 1-128 characters from A-Z a-z 0-9 . _ : -"
OPTIONAL = ("session_id", "return_info", "trajectory")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, what was wrong and what is expected."""

    def __init__(self, status: int, error: str, expected: str):
        super().__init__(error)
        self.status, self.error, self.expected = status, error, expected

    def body(self) -> dict[str, str]:
        return {"error": self.error, "expected": self.expected}


@dataclass(frozen=True)
class ObsSpec:
    """What one observation must look like for the served policy.

    Args:
        n_wrist: wrist images the model takes (``n_images - 1``).
        proprio_dim: length of ``state``.
        needs_state: the model has a proprio projector (else ``state`` is optional).
        min_side: smallest image height/width accepted (images are resized to the model's size).
        max_side: largest image height/width accepted.
        max_instruction_chars: longest instruction accepted.
        max_trajectory: most per-step states accepted in ``trajectory``.
    """

    n_wrist: int
    proprio_dim: int
    needs_state: bool = True
    min_side: int = 16
    max_side: int = 2048
    max_instruction_chars: int = 2048
    max_trajectory: int = 4096

    def __post_init__(self) -> None:
        if self.n_wrist < 0 or self.proprio_dim < 1:
            raise ValueError(f"ObsSpec needs n_wrist >= 0 and proprio_dim >= 1, got {self.n_wrist}, {self.proprio_dim}")
        if not 1 <= self.min_side <= self.max_side:
            raise ValueError(f"ObsSpec needs 1 <= min_side <= max_side, got {self.min_side}, {self.max_side}")

    def fields(self) -> str:
        wrist = f"{self.n_wrist} wrist image(s) (keys containing 'wrist')" if self.n_wrist else "no wrist images"
        state = "state" if self.needs_state else "optional state"
        return (f"full_image and {wrist} as json-numpy uint8 arrays (H, W, 3), {state} ({self.proprio_dim} finite "
                f"numbers), instruction (non-empty string); optional: {', '.join(OPTIONAL)}")


@dataclass
class ActRequest:
    """A validated ``/act`` request."""

    obs: dict[str, Any]
    session_id: str | None = None
    return_info: bool = False
    trajectory: list[np.ndarray] = field(default_factory=list)
    encoded: bool = False


# -- body ----------------------------------------------------------------------------------
def parse_json(body: bytes, max_array_bytes: int | None = None) -> tuple[dict[str, Any], bool]:
    """Body bytes to a dict with numpy arrays decoded; also whether it came in the ``encoded`` form."""
    payload = _loads(body, "request body", max_array_bytes)
    if not isinstance(payload, dict):
        raise RequestError(400, f"request body is a JSON {type(payload).__name__}", "a JSON object")
    if "encoded" not in payload:
        return payload, False
    if len(payload) != 1:
        raise RequestError(400, f"'encoded' must be the only field, got {sorted(payload)}",
                           '{"encoded": <the observation as a JSON string>}, session id in the X-Session-Id header')
    if not isinstance(payload["encoded"], str):
        raise RequestError(400, f"'encoded' is a {type(payload['encoded']).__name__}", "a JSON string of the observation")
    inner = _loads(payload["encoded"], "'encoded'", max_array_bytes)
    if not isinstance(inner, dict):
        raise RequestError(400, f"'encoded' holds a JSON {type(inner).__name__}", "a JSON object (the observation)")
    return inner, True


def _loads(text: str | bytes, what: str, max_array_bytes: int | None) -> Any:
    def hook(d: dict) -> Any:
        return numpy_json.decode_array(d, max_array_bytes) if numpy_json.TAG in d else d

    try:
        return json.loads(text, object_hook=hook)
    except numpy_json.NumpyJsonError as e:
        raise RequestError(400, f"{what}: {e}", numpy_json.EXPECTED) from None
    except RecursionError:
        raise RequestError(400, f"{what} is nested too deeply", "a flat observation object") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise RequestError(400, f"{what} is not valid JSON ({e})", "a UTF-8 JSON object") from None


def flag(value: Any, name: str) -> bool:
    """A boolean from JSON (true/false) or a query string (1/0/true/false/yes/no)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "0", "false", "no", ""):
        return value.lower() in ("1", "true", "yes")
    raise RequestError(400, f"{name} is {value!r}", f"{name} as a boolean (true/false, or 1/0 in a query string)")


def session_id(field_value: Any, header: str | None) -> str | None:
    """The session id from the body field or the ``X-Session-Id`` header (they must agree)."""
    for name, value in (("session_id", field_value), ("X-Session-Id header", header)):
        if value is not None and not (isinstance(value, str) and SESSION_ID.fullmatch(value)):
            raise RequestError(400, f"{name} is {_show(value)}", SESSION_EXPECTED)
    if field_value is not None and header is not None and field_value != header:
        raise RequestError(400, f"session_id {field_value!r} differs from the X-Session-Id header {header!r}",
                           "one session id, in the body or the header (or both, equal)")
    return field_value if field_value is not None else header


# -- observation ---------------------------------------------------------------------------
def check_act(payload: dict[str, Any], spec: ObsSpec, header_session: str | None = None) -> ActRequest:
    """Validate an ``/act`` payload; returns the observation the policy gets and the options."""
    _check_keys(payload, spec)
    obs: dict[str, Any] = {}
    for key in payload:
        if key == "full_image" or "wrist" in key:
            obs[key] = check_image(payload[key], key, spec)
    text_key = "instruction" if "instruction" in payload else "task_description"
    obs["instruction"] = check_instruction(payload[text_key], text_key, spec)
    if "state" in payload:
        obs["state"] = check_state(payload["state"], "state", spec)
    return ActRequest(
        obs,
        session_id(payload.get("session_id"), header_session),
        flag(payload.get("return_info", False), "return_info"),
        check_trajectory(payload.get("trajectory", []), spec),
    )


def _check_keys(payload: dict[str, Any], spec: ObsSpec) -> None:
    wrist = [k for k in payload if "wrist" in k]
    known = {"full_image", "state", "instruction", "task_description", *OPTIONAL, *wrist}
    extra = sorted(k for k in payload if k not in known)
    if extra:
        raise RequestError(400, f"unexpected field(s) {extra}", spec.fields())
    missing = [k for k in ("full_image",) + (("state",) if spec.needs_state else ()) if k not in payload]
    if "instruction" not in payload and "task_description" not in payload:
        missing.append("instruction")
    if missing:
        raise RequestError(400, f"missing field(s) {missing}", spec.fields())
    if "instruction" in payload and "task_description" in payload:
        raise RequestError(400, "both 'instruction' and 'task_description' given", "one of them (instruction)")
    if len(wrist) != spec.n_wrist:
        raise RequestError(400, f"{len(wrist)} wrist image(s) {wrist}", f"{spec.n_wrist} (the model takes "
                           f"{spec.n_wrist + 1} images: full_image + keys containing 'wrist')")


def check_image(value: Any, name: str, spec: ObsSpec) -> np.ndarray:
    expected = (f"a json-numpy uint8 array (H, W, 3) with {spec.min_side} <= H, W <= {spec.max_side} "
                "(resized to the model's input if needed)")
    if not isinstance(value, np.ndarray):
        raise RequestError(400, f"{name} is {_show(value)}", expected)
    if value.dtype != np.uint8 or value.ndim != 3 or value.shape[2] != 3:
        raise RequestError(400, f"{name} has dtype {value.dtype} and shape {list(value.shape)}", expected)
    h, w = value.shape[:2]
    if not (spec.min_side <= h <= spec.max_side and spec.min_side <= w <= spec.max_side):
        raise RequestError(400, f"{name} is {h}x{w} pixels", expected)
    return value


def check_state(value: Any, name: str, spec: ObsSpec) -> np.ndarray:
    """A raw proprio vector: json-numpy array or JSON list of ``proprio_dim`` finite numbers."""
    expected = f"{spec.proprio_dim} finite numbers (a json-numpy array or a JSON list)"
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        try:
            value = np.asarray(value, np.float64) if value else np.zeros(0)
        except OverflowError:  # a JSON integer beyond float range
            raise RequestError(400, f"{name} holds a number beyond float64 range", expected) from None
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":
        raise RequestError(400, f"{name} is {_show(value)}", expected)
    if value.shape != (spec.proprio_dim,):
        raise RequestError(400, f"{name} has shape {list(value.shape)}", expected)
    state = value.astype(np.float64)
    if not np.isfinite(state).all():
        raise RequestError(400, f"{name} holds non-finite values {state.tolist()}", expected)
    return state


def check_instruction(value: Any, name: str, spec: ObsSpec) -> str:
    expected = f"a non-empty string of at most {spec.max_instruction_chars} characters"
    if not isinstance(value, str) or not value.strip():
        raise RequestError(400, f"{name} is {_show(value)}", expected)
    if len(value) > spec.max_instruction_chars:
        raise RequestError(400, f"{name} has {len(value)} characters", expected)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone UTF-16 surrogate such as "\ud800" (valid JSON, not text)
        raise RequestError(400, f"{name} holds {value[e.start:e.end]!r} at character {e.start}, a lone UTF-16 "
                           "surrogate that is not text", expected + " of valid Unicode text") from None
    return value


def check_trajectory(value: Any, spec: ObsSpec) -> list[np.ndarray]:
    if isinstance(value, np.ndarray) and value.ndim == 2:
        value = list(value)
    if not isinstance(value, list) or len(value) > spec.max_trajectory:
        raise RequestError(400, f"trajectory is {_show(value)}", f"a list of at most {spec.max_trajectory} states "
                           f"recorded since the previous query, each {spec.proprio_dim} finite numbers")
    return [check_state(s, f"trajectory[{i}]", spec) for i, s in enumerate(value)]


def _show(value: Any) -> str:
    """A short description of a bad value for an error message."""
    if isinstance(value, np.ndarray):
        return f"an array of dtype {value.dtype} and shape {list(value.shape)}"
    if isinstance(value, np.generic):
        return f"a numpy scalar of dtype {value.dtype}"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:8]}"
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
