"""``vla-adp pruners [NAME ...] [--json]``: the registered pruning methods and their parameters.

Every name works with ``--pruner NAME`` (predict and the evaluation commands) and as ``"pruner"`` in
a pruning-config JSON; the parameters listed are the config fields such a JSON may set.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


def add_arguments(p) -> None:
    p.add_argument("names", nargs="*", help="only these pruners (default: all)")
    p.add_argument("--json", action="store_true", help="print {name: {summary, parameters}} as JSON")


def flatten(fields: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Nested config dataclasses (ADP's ``gate``) become dotted names."""
    out = []
    for name, value in fields:
        if dataclasses.is_dataclass(value):
            out += [(f"{name}.{f.name}", getattr(value, f.name)) for f in dataclasses.fields(value)]
        else:
            out.append((name, value))
    return out


def entries(names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {"summary", "parameters"} or {"error"}}: a pruner that cannot import is reported, not fatal."""
    from vla_adp.pruning.registry import describe_one

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            summary, fields = describe_one(name)
        except ImportError as e:
            out[name] = {"error": f"cannot be imported: {e}"}
            continue
        out[name] = {"summary": summary, "parameters": dict(flatten(fields))}
    return out


def run(args) -> int:
    from vla_adp.pruning.registry import PRUNERS

    unknown = [n for n in args.names if n not in PRUNERS]
    if unknown:
        raise ValueError(f"unknown pruner(s) {unknown}; registered: {sorted(PRUNERS)}")
    table = entries(args.names or list(PRUNERS))
    if args.json:
        print(json.dumps(table, indent=2, default=repr))
    else:
        for name, entry in table.items():
            print(f"{name:12s} {entry.get('summary') or entry['error']}")
            params = entry.get("parameters", {})
            if params:
                print("             " + "  ".join(f"{k}={v!r}" for k, v in params.items()))
    return 1 if any("error" in e for e in table.values()) else 0
