#!/usr/bin/env bash
# The GPU latency protocol (issue 18, docs/latency.md) on a bare GPU machine, in one call.
#
#   bash benchmarks/gpu/run.sh OUT_DIR [extra args of python -m vla_adp.bench.gpu_latency]
#
# Needs PyTorch (CUDA), timm, transformers, safetensors, sentencepiece and pillow already installed; no
# network. Installs this checkout without dependencies (falls back to PYTHONPATH=src), records the
# machine, and runs the protocol within a 400 s budget under a hard 470 s stop: under 8 minutes on an
# H100 with the install. OUT_DIR gets latency.json and latency.md (rewritten after every section, so a
# hard stop keeps what was measured), nvidia-smi.txt, env.txt and run.log.
set -uo pipefail
OUT=${1:?usage: bash benchmarks/gpu/run.sh OUT_DIR [args]}
shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-$(command -v python || command -v python3)}

if [ -z "${NO_INSTALL:-}" ]; then  # NO_INSTALL=1: leave the environment alone (a shared venv)
  "$PY" -m pip install --no-deps --no-build-isolation -e . >"$OUT/pip.log" 2>&1 \
    || echo "pip install -e . failed (see pip.log); running from PYTHONPATH=src" | tee -a "$OUT/run.log"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
nvidia-smi -q -d CLOCK >>"$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - >"$OUT/env.txt" 2>&1 <<'PYEOF'
import platform, timm, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "timm", timm.__version__, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
PYEOF
cat "$OUT/env.txt"

timeout -k 10 470 "$PY" -m vla_adp.bench.gpu_latency --out "$OUT" "$@" 2>&1 | tee -a "$OUT/run.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "stopped at 470 s: latency.md holds the sections that finished" | tee -a "$OUT/run.log"
exit "$rc"
