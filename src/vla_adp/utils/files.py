"""Reading the small JSON files users hand us (configs, grids, results) with errors that say which."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, what: str, expect: type | None = dict) -> Any:
    """Parse ``path``; a missing file, invalid JSON or the wrong top-level type is a clear error.

    Args:
        what: how to name the file in errors ("pruning config", "grid file", ...).
        expect: required type of the top-level value (``None``: any).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{p}: expected a JSON {expect.__name__} ({what}), found {type(data).__name__}")
    return data
