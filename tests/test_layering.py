"""The package layering: no package of vla_adp imports one above it, so the package graph has no loop.

Every ``import``/``from ... import`` of ``vla_adp.<package>`` counts, at module level or inside a
function (a lazy import still ties the packages). Pure AST reading: nothing is imported.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import vla_adp

ROOT = Path(vla_adp.__file__).parent
# Bottom to top; a package may import only packages on a lower floor.
FLOORS = [
    {"utils", "constants"},
    {"seam"},  # the token layout, keep sets, LayerContext, run_query, decoder FLOPs
    {"model"},  # model families
    {"pruning"},  # pruning methods on the seam
    {"cost"},  # analytic cost models (ADP tables, roofline)
    {"policy", "envs"},
    {"openvla_policy", "pi0_policy"},  # OpenVLA (autoregressive) on the shared Policy; π0 / π0.5 beside it
    {"families"},  # the table of model families (policy class, pruner factory per family)
    {"train", "bench"},
    {"viz"},  # pictures: overlays, episode videos, importance analysis
    {"eval"},  # closed-loop runs and their logs (records episode videos)
    {"report"},  # tables and figures from run logs
    {"serve"},
    {"commands"},
    {"cli"},
    {"__main__"},
]
FLOOR = {pkg: i for i, floor in enumerate(FLOORS) for pkg in floor}


def package_imports() -> list[tuple[str, str, str]]:
    """(importing package, imported package, file) for every import between two vla_adp packages."""
    out = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        src = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                parts = name.split(".")
                if parts[0] == "vla_adp" and len(parts) > 1 and parts[1] != src:
                    out.append((src, parts[1], str(rel)))
    return out


def test_every_package_has_a_floor():
    packages = {p.name.removesuffix(".py") for p in ROOT.iterdir()
                if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert packages - set(FLOOR) == set(), "give every package a floor in FLOORS"


def test_no_package_imports_one_above_it():
    upward = sorted({(a, b, f) for a, b, f in package_imports() if FLOOR[b] >= FLOOR[a]})
    assert upward == [], "imports that run upward or sideways: " + "; ".join(f"{f}: {a} -> {b}" for a, b, f in upward)


def test_family_references_sit_below_families():
    """The table names its policies and pruner factories as strings (imported lazily): they count as imports."""
    from vla_adp.families import FAMILIES, resolve

    for fam in FAMILIES.values():
        for ref in (fam.policy, fam.config, fam.pruner_factory):
            if ref is None:
                continue
            package = ref.split(":")[0].split(".")[1]
            assert FLOOR[package] < FLOOR["families"], f"{fam.name}: {ref} is not below the families floor"
            assert callable(resolve(ref)), ref
        for env, module in fam.envs or ():  # env adapters are imported by name too
            package = module.split(".")[1]
            assert FLOOR[package] < FLOOR["families"], f"{fam.name}: {env} adapter {module} is not below families"
            assert callable(importlib.import_module(module).make_env), module
