"""No "Exception ignored in ... __del__" EGL tracebacks when a simulator process exits.

Each case runs a short simulator script in a fresh interpreter (the tracebacks appear only at
interpreter shutdown) that builds an env, steps it, and exits *without* closing it; stderr must hold
no traceback. The control case drops the env from :mod:`vla_adp.envs.closing` first: then the
libraries' own ``__del__`` runs at teardown and the traceback does appear, which shows the check
can see it on this machine.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
pytestmark = pytest.mark.sim

METAWORLD = """
import numpy as np
from vla_adp.envs import closing
from vla_adp.envs.metaworld import make_env
env = make_env("metaworld", 0, max_steps=3, image_size=32)
env.reset(0)
env.step(np.zeros(4))
if {untracked}:
    closing._open.clear()
print("exiting without close()")
"""

LIBERO = """
import numpy as np
from vla_adp.envs.libero import make_env
env = make_env("libero_spatial", 0, max_steps=2, render="fast")
env.reset(0)
env.step(np.zeros(7))
print("exiting without close()")
"""


def run(script: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "exiting without close()" in out.stdout, out.stderr[-3000:]
    return out


def has_teardown_traceback(stderr: str) -> bool:
    return "Exception ignored in" in stderr or "EGLError" in stderr


def test_metaworld_exit_is_quiet():
    pytest.importorskip("metaworld")
    assert not has_teardown_traceback(run(METAWORLD.format(untracked=False)).stderr)


def test_metaworld_exit_without_the_hook_shows_the_traceback():
    pytest.importorskip("metaworld")
    stderr = run(METAWORLD.format(untracked=True)).stderr
    assert has_teardown_traceback(stderr) and "Renderer.__del__" in stderr


@pytest.mark.slow
def test_libero_exit_is_quiet():
    pytest.importorskip("libero")
    assert not has_teardown_traceback(run(LIBERO).stderr)
