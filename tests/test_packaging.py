"""The package as users install it: sdist -> wheel -> a fresh virtual environment, outside the checkout.

Built with setuptools' PEP 517 backend (``setuptools.build_meta``, what ``python -m build`` calls) from
a copy of the tracked files only, so nothing untracked in the checkout can leak into the package;
the wheel is built *from the sdist*, as ``pip install vla-adp`` from a source release would. The fresh
environment has no system site-packages; the wheel goes in with ``pip install --no-deps`` and the
third-party dependencies (torch, timm, Meta-World, ...) are borrowed from the test's own environment
through a ``.pth`` line, because installing torch from the network is out of a test's budget. The
editable install of the checkout is not on that path (a ``.pth`` inside a borrowed directory is not
processed), which the test checks: ``vla_adp`` must import from the fresh environment.
"""

import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import vla_adp

ROOT = Path(__file__).resolve().parents[1]
BACKEND = "from setuptools import build_meta as b; import sys; print(getattr(b, sys.argv[1])(sys.argv[2]))"


def sh(*cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{cmd}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    return out.stdout


def tracked_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(src.read_bytes())
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the package is built from the tracked files)")
    tmp = tmp_path_factory.mktemp("pkg")
    tree = tracked_copy(tmp / "tree")
    dist = tmp / "dist"
    dist.mkdir()
    sdist = dist / sh(sys.executable, "-c", BACKEND, "build_sdist", dist, cwd=tree).strip().splitlines()[-1]
    with tarfile.open(sdist) as t:
        t.extractall(tmp / "unpacked", filter="data")
    unpacked = next((tmp / "unpacked").iterdir())
    wheel = dist / sh(sys.executable, "-c", BACKEND, "build_wheel", dist, cwd=unpacked).strip().splitlines()[-1]
    return sdist, wheel, tmp


@pytest.fixture(scope="module")
def venv(built):
    _, wheel, tmp = built
    env_dir = tmp / "fresh"
    sh(sys.executable, "-m", "venv", "--without-pip", env_dir)
    py = env_dir / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "--quiet", wheel)
    fresh_site = Path(sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    (fresh_site / "borrowed_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env_dir


def run_in(venv, *args, cwd, timeout=900):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}\nstdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    assert "Exception ignored in" not in out.stderr, out.stderr[-3000:]  # e.g. EGL contexts at exit
    return out.stdout


def test_sdist_and_wheel_carry_the_package_data(built):
    sdist, wheel, _ = built
    assert wheel.name == f"vla_adp-{vla_adp.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(f"vla_adp-{vla_adp.__version__}.dist-info/METADATA").decode()
    with tarfile.open(sdist) as t:
        in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for policy in ("metaworld_policy", "metaworld_lightvla"):
        for f in ("config.json", "dataset_statistics.json", "tokenizer.model", "model.safetensors.index.json"):
            assert f"vla_adp/assets/{policy}/{f}" in names
            assert f"src/vla_adp/assets/{policy}/{f}" in in_sdist
    assert {"vla_adp/serve/openpi_server.py", "vla_adp/serve/vla_eval_server.py", "vla_adp/model/hub.py"} <= names
    assert not any(n.startswith("tests/") for n in names)
    for extra in ("sim", "serve", "vla-eval", "hub", "viz", "ray", "all", "dev"):
        assert f"Provides-Extra: {extra}" in meta
    assert f"Version: {vla_adp.__version__}" in meta and "README.md" in in_sdist and "CHANGELOG.md" in in_sdist


@pytest.mark.slow
def test_fresh_venv_runs_help_predict_and_demo_outside_the_checkout(venv, tmp_path):
    bin_ = venv / "bin"
    where = run_in(venv, bin_ / "python", "-c", "import vla_adp; print(vla_adp.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv)), where  # the installed wheel, not the checkout
    assert run_in(venv, bin_ / "vla-adp", "--version", cwd=tmp_path).strip() == f"vla-adp {vla_adp.__version__}"
    assert "serve" in run_in(venv, bin_ / "vla-adp", "--help", cwd=tmp_path)
    assets = Path(where).parent / "assets" / "metaworld_policy"
    out = run_in(venv, bin_ / "vla-adp", "predict", "--checkpoint", assets, "--repeat", "1", "--device", "cpu",
                 cwd=tmp_path)
    assert "platform metaworld" in out and "timings (ms)" in out
    out = run_in(venv, bin_ / "vla-adp", "demo", "--episodes", "1", "--out", tmp_path / "demo", cwd=tmp_path)
    assert "ADP rho=0.5" in out and any((tmp_path / "demo").rglob("*.mp4")), out
    assert (tmp_path / "demo" / "gate_timeline.png").is_file()
