"""jobs/demo.py (`make demo`): its first stages on the real sample video, then a re-run
that resumes instead of redoing them. (Every later stage is its own job, tested with it.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _demo(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}   # its own local Ray
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "demo.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_demo_runs_its_first_stages_then_resumes(tmp_path):
    run_dir = tmp_path / "demo"
    first = _demo("--run-dir", str(run_dir), "--stop-after", "shards")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    state = json.loads((run_dir / "stages.json").read_text())
    assert list(state) == ["probe", "shards"]
    assert state["probe"]["frames"] == 250                      # bikes.mp4
    assert (run_dir / "probe" / "contact_sheet.png").stat().st_size > 10_000
    manifest = pd.read_parquet(run_dir / "shards" / "manifest.parquet")
    assert len(manifest) == state["shards"]["clips"] > 0
    assert "drfa: running" not in first.stdout

    again = _demo("--run-dir", str(run_dir), "--stop-after", "shards")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "probe: done in an earlier run, skipping" in again.stdout
    assert "shards: done in an earlier run, skipping" in again.stdout
    assert "running" not in again.stdout and "Ray dashboard" not in again.stdout   # nothing to do: no Ray
    assert json.loads((run_dir / "stages.json").read_text()) == state


def test_demo_names_the_stages_when_asked_for_an_unknown_one(tmp_path):
    out = _demo("--run-dir", str(tmp_path / "demo"), "--stop-after", "distil")
    assert out.returncode != 0
    assert "'distil' is not a stage" in out.stderr and "distill" in out.stderr
