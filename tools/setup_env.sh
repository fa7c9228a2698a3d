#!/usr/bin/env bash
# Create .venv (if missing) and install d2vr with everything it needs, without ever
# pulling a CUDA torch onto a CPU machine. A second run with nothing changed installs
# nothing. A machine whose Python already has torch (e.g. a CUDA build on a GPU node)
# keeps it: the venv sees system packages and the constraints pin that version.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "setup: system torch found, creating $VENV with --system-site-packages"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"

# Constraints: the torch already present, else the CPU wheel on disk; torchvision is
# its pairing (0.(minor+15)).
torch_version=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo 2.13.0)
tv_minor=$(( $(echo "$torch_version" | cut -d. -f2) + 15 ))
mkdir -p "$VENV/d2vr"
{
  echo "torch==$torch_version"
  echo "torchvision==0.$tv_minor.*"
  grep -v -E '^(#|torch==|torchvision==)' constraints/cpu.txt || true
} > "$VENV/d2vr/constraints.txt"

stamp="$VENV/d2vr/installed.sha256"
want=$(cat pyproject.toml "$VENV/d2vr/constraints.txt" tools/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # up to date: install nothing
fi

echo "setup: installing d2vr into $VENV (torch $torch_version) ..."
start=$(date +%s)
# pip byte-compiles the ~23,000 installed modules one at a time (about half of the install
# on 2 cores); compileall does the same on every core. The .pyc files matter: with
# PYTHONDONTWRITEBYTECODE set (as on some CI images) nothing would ever cache them, and
# every Ray worker would recompile torch on import. A file that does not compile (Python 2
# leftovers in some packages) is skipped, as pip skips it.
"$PY" -m pip install --quiet --disable-pip-version-check --no-compile \
  -c "$VENV/d2vr/constraints.txt" -e ".[test]"
# pyiqa without its requirements: they add 30 packages (0.6 GB installed) that none of the
# metrics used here needs (bitsandbytes, datasets, facexlib + a second, non-headless opencv,
# numba/llvmlite, matplotlib, tensorboard, pre-commit, ruff, yapf, sentencepiece, ...).
# What niqe, piqe, dists, musiq, maniqa and clipiqa import is listed in pyproject.toml.
# Fresh clone, warm pip cache, 2-core machine loaded by other jobs: with pyiqa's
# requirements 483 s, .venv 3,105 MB, 161 packages; without them 425 s, 2,496 MB, 131.
"$PY" -m pip install --quiet --disable-pip-version-check --no-compile --no-deps \
  -c "$VENV/d2vr/constraints.txt" "pyiqa==0.1.16"
site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
"$PY" -m compileall -qq -j 0 "$site" || true
echo "import pipelines.common.torchvision_compat as _c; _c.install()" > "$site/d2vr_torchvision_compat.pth"
echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - start )) s"
