"""``vla-adp demo``: for now, a prediction with a freshly made tiny checkpoint (issue 6 replaces it)."""

from __future__ import annotations

import tempfile


def add_arguments(p) -> None:
    pass


def run(args) -> int:
    from vla_adp.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        main(["make-tiny-checkpoint", f"{tmp}/tiny"])
        return main(["predict", "--checkpoint", f"{tmp}/tiny"])
