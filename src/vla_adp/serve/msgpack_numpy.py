"""openpi's msgpack-numpy wire format, read strictly, written exactly as ``openpi-client`` does.

``openpi_client/msgpack_numpy.py`` (openpi, ``packages/openpi-client``) packs every numpy array as the
msgpack map ``{b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": <numpy descr such as
"|u1" or "<f8">, b"shape": [...]}`` and every numpy scalar as ``{b"__npgeneric__": True, b"data":
<Python value>, b"dtype": <descr>}``; object, void and complex arrays are refused. We write the same
maps (so the real client decodes our answers), and read them strictly: a malformed map raises
:class:`MsgpackNumpyError` naming what was wrong instead of whatever numpy or msgpack would throw,
so the server can answer with a clean error. Keys may come as bytes (openpi) or str (other packers).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ARRAY, SCALAR = "__ndarray__", "__npgeneric__"
ARRAY_KEYS = frozenset({ARRAY, "data", "dtype", "shape"})
SCALAR_KEYS = frozenset({SCALAR, "data", "dtype"})
KINDS = "biuf"  # bool, ints, floats: what a robot observation holds
EXPECTED = ('msgpack maps as openpi_client.msgpack_numpy packs them: {"__ndarray__": true, "data": <C-order bytes>, '
            '"dtype": "<f8" (a numpy descr of bool/int/uint/float), "shape": [d0, d1, ...]}')


class MsgpackNumpyError(ValueError):
    """A msgpack message or numpy map that cannot be decoded; the message says what was wrong."""


# -- writing -------------------------------------------------------------------------------
def encode(obj: Any) -> Any:
    """``msgpack.packb(default=...)`` hook: numpy arrays and scalars to openpi's maps."""
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot pack a {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=encode, use_bin_type=True)


# -- reading -------------------------------------------------------------------------------
def unpackb(data: bytes, max_array_bytes: int | None = None) -> Any:
    """One msgpack message with numpy maps decoded (arrays are writable copies).

    Raises:
        MsgpackNumpyError: not msgpack, trailing bytes, nesting too deep, or a malformed numpy map.
    """
    def hook(d: dict) -> Any:
        return decode(d, max_array_bytes) if _has(d, ARRAY) or _has(d, SCALAR) else d

    try:
        return msgpack.unpackb(data, object_hook=hook, raw=False, strict_map_key=True)
    except MsgpackNumpyError:
        raise
    except msgpack.ExtraData:
        raise MsgpackNumpyError("the message has bytes after its msgpack object") from None
    except (msgpack.StackError, RecursionError):
        raise MsgpackNumpyError("the msgpack message is nested too deeply") from None
    except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as e:
        # FormatError/StackError (nesting), OutOfData (truncated), bad UTF-8, unhashable map keys
        raise MsgpackNumpyError(f"not a valid msgpack message ({type(e).__name__}: {e})") from None


def decode(d: dict, max_bytes: int | None = None) -> np.ndarray | np.generic:
    """One numpy map (array or scalar) to numpy; see the module docstring for the layout."""
    d = {k.decode("utf-8", "replace") if isinstance(k, bytes) else k: v for k, v in d.items()}
    is_array = ARRAY in d
    keys = ARRAY_KEYS if is_array else SCALAR_KEYS
    if set(d) != keys:
        raise MsgpackNumpyError(f"numpy map has keys {sorted(map(str, d))}; expected exactly {sorted(keys)}")
    dtype = _dtype(d["dtype"])
    if not is_array:
        return _scalar(d["data"], dtype)
    shape = _shape(d["shape"])
    data = d["data"]
    if not isinstance(data, bytes):
        raise MsgpackNumpyError(f"numpy map 'data' must be msgpack bin (bytes), got {type(data).__name__}")
    if max_bytes is not None and len(data) > max_bytes:
        raise MsgpackNumpyError(f"numpy array is larger than the {max_bytes}-byte limit")
    want = math.prod(shape) * dtype.itemsize
    if len(data) != want:
        raise MsgpackNumpyError(f"numpy map 'data' holds {len(data)} bytes; dtype {dtype.str!r} with shape "
                                f"{list(shape)} needs {want}")
    return np.frombuffer(data, dtype).reshape(shape).copy()


def _has(d: dict, key: str) -> bool:
    return key in d or key.encode() in d


def _dtype(descr: Any) -> np.dtype:
    if isinstance(descr, bytes):
        descr = descr.decode("utf-8", "replace")
    if not isinstance(descr, str):
        raise MsgpackNumpyError(f"numpy map 'dtype' must be a numpy descr string such as '|u1', got {descr!r}")
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError, SyntaxError):
        raise MsgpackNumpyError(f"numpy map 'dtype' {descr!r} is not a numpy dtype; expected e.g. '|u1' or '<f8'") from None
    if dtype.kind not in KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise MsgpackNumpyError(f"numpy map 'dtype' {descr!r} is not a plain numeric dtype (bool, int, uint, float)")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    ok = isinstance(shape, (list, tuple)) and len(shape) <= 32 and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    if not ok:
        raise MsgpackNumpyError(f"numpy map 'shape' must be a list of at most 32 non-negative ints, got {shape!r}")
    return tuple(shape)


def _scalar(value: Any, dtype: np.dtype) -> np.generic:
    if not isinstance(value, (bool, int, float)):
        raise MsgpackNumpyError(f"numpy scalar 'data' must be a number, got {type(value).__name__}")
    try:
        return dtype.type(value)
    except (OverflowError, ValueError, TypeError) as e:
        raise MsgpackNumpyError(f"numpy scalar {value!r} does not fit dtype {dtype.str!r} ({e})") from None
