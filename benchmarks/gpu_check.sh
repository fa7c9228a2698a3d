#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): what only a GPU shows, <= 8 min on one H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python benchmarks/gpu_check.py "$@"
