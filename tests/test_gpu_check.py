"""benchmarks/gpu_check.py stays ready for the first GPU: its --smoke mode runs every check
on tiny models on the CPU and prints the figures line the README quotes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_check():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("GPU_CHECK "))
    figures = json.loads(line[len("GPU_CHECK "):])
    assert set(figures) >= {"unet_step", "vae_decode", "restore", "drfa_step", "distill"}
    assert figures["unet_step"]["tflop_per_step"] > 0 and figures["restore"]["frames_per_s"] > 0
    assert 0 < figures["vae_decode"]["bf16_max_pixel_error"] < 1
    assert figures["distill"]["seconds"] > 0
    # without --smoke and without CUDA it refuses in one line instead of running on the CPU
    if not __import__("torch").cuda.is_available():
        bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0 and "no CUDA device" in bad.stderr
