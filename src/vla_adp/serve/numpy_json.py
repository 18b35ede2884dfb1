"""json-numpy's wire format for numpy arrays, without depending on the ``json_numpy`` package.

OpenVLA-OFT's ``deploy.py`` (moojink/openvla-oft ``vla-scripts/deploy.py``) applies ``json_numpy.patch()``, so its clients send and
receive every numpy array or scalar as ``{"__numpy__": <base64 of the raw C-order bytes>, "dtype":
<numpy descr such as "|u1" or "<f8">, "shape": [...]}``; an empty shape decodes to a numpy scalar.
This module writes exactly that (tested byte-for-byte against json_numpy 2.x in both directions) and
reads it strictly: every malformed object raises :class:`NumpyJsonError` naming what was wrong, so a
server can answer with a 4xx instead of a traceback.
"""

from __future__ import annotations

import binascii
import json
import math
from base64 import b64decode, b64encode
from typing import Any

import numpy as np
from numpy.lib.format import dtype_to_descr

TAG = "__numpy__"
KEYS = frozenset({TAG, "dtype", "shape"})
# Kinds a robot client can mean: bool, ints, floats, complex. Object/void/str/datetime are refused.
KINDS = "biufc"
EXPECTED = '{"__numpy__": <base64 of the C-order bytes>, "dtype": "<f8" (a numpy descr), "shape": [d0, d1, ...]}'


class NumpyJsonError(ValueError):
    """A json-numpy object that cannot be decoded; the message says what was wrong."""


def default(o: Any) -> dict[str, Any]:
    """``json.dumps(default=...)`` hook: numpy arrays and scalars to json-numpy objects."""
    if isinstance(o, (np.ndarray, np.generic)):
        data = o.data if o.flags["C_CONTIGUOUS"] else o.tobytes()
        return {TAG: b64encode(data).decode(), "dtype": dtype_to_descr(o.dtype), "shape": list(o.shape)}
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes numpy arrays/scalars the way ``json_numpy.dumps`` does."""
    return json.dumps(obj, default=default, **kwargs)


def decode_array(d: dict, max_bytes: int | None = None) -> np.ndarray | np.generic:
    """One json-numpy object to a (read-only) array, or a scalar when ``shape`` is empty.

    Raises:
        NumpyJsonError: missing/extra keys, unknown or non-numeric dtype, bad shape or base64, or a
            byte count that does not match ``dtype`` × ``shape``.
    """
    if set(d) != KEYS:
        raise NumpyJsonError(f"json-numpy object has keys {sorted(d)}; expected exactly {sorted(KEYS)}")
    dtype = _dtype(d["dtype"])
    shape = _shape(d["shape"])
    data = _bytes(d[TAG], max_bytes)
    want = math.prod(shape) * dtype.itemsize
    if len(data) != want:
        raise NumpyJsonError(f"json-numpy data holds {len(data)} bytes; dtype {d['dtype']!r} with shape "
                             f"{list(shape)} needs {want}")
    arr = np.frombuffer(data, dtype)
    return arr.reshape(shape) if shape else arr[0]


def object_hook(d: dict) -> Any:
    """``json.loads(object_hook=...)``: json-numpy objects to numpy, any other dict unchanged."""
    return decode_array(d) if TAG in d else d


def loads(text: str | bytes, **kwargs: Any) -> Any:
    """``json.loads`` that decodes json-numpy objects (strictly, see :func:`decode_array`)."""
    return json.loads(text, object_hook=object_hook, **kwargs)


def _dtype(descr: Any) -> np.dtype:
    if not isinstance(descr, str):
        raise NumpyJsonError(f"json-numpy 'dtype' must be a numpy descr string such as '|u1' or '<f8', got {descr!r}")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError):
        raise NumpyJsonError(f"json-numpy 'dtype' {descr!r} is not a numpy dtype; expected e.g. '|u1' or '<f8'") from None
    if dtype.kind not in KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise NumpyJsonError(f"json-numpy 'dtype' {descr!r} is not a plain numeric dtype (bool, int, uint, float)")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    ok = isinstance(shape, list) and len(shape) <= 32 and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    if not ok:
        raise NumpyJsonError(f"json-numpy 'shape' must be a list of at most 32 non-negative ints, got {shape!r}")
    return tuple(shape)


def _bytes(text: Any, max_bytes: int | None) -> bytes:
    if not isinstance(text, str):
        raise NumpyJsonError(f"json-numpy '__numpy__' must be a base64 string, got {type(text).__name__}")
    decoded = len(text) // 4 * 3 - text.endswith("=") - text.endswith("==")  # exact for valid base64
    if max_bytes is not None and decoded > max_bytes:
        raise NumpyJsonError(f"json-numpy array is larger than the {max_bytes}-byte limit")
    try:
        return b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise NumpyJsonError(f"json-numpy '__numpy__' is not valid base64 ({e})") from None
