"""jobs/demo.py (`make demo`): its first stages on the real sample video, then a re-run
that resumes instead of redoing them. (Every later stage is its own job, tested with it.)"""
from __future__ import annotations

import importlib
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


@pytest.mark.parametrize("flag, value, message", [
    ("--degrade", "strong", "--degrade 'strong': choose from clean, light, medium, heavy"),
    ("--student", "assets", "--student assets: not a student folder (no student/config.json inside)"),
    ("--prior", "assets", "--prior assets: not a prior folder (no unet/ inside)")])
def test_demo_rejects_a_bad_flag_before_any_stage_runs(tmp_path, flag, value, message):
    out = _demo("--run-dir", str(tmp_path / "demo"), flag, value)
    assert out.returncode != 0
    assert message in out.stderr.strip().splitlines()[-1]
    assert "running" not in out.stdout and not (tmp_path / "demo" / "stages.json").exists()


def test_demo_about_states_the_sizes_of_the_models_it_trained(tmp_path):
    import torch
    from safetensors.torch import save_file

    if str(ROOT / "jobs") not in sys.path:     # the job imports its `_bootstrap` sibling
        sys.path.append(str(ROOT / "jobs"))
    demo = importlib.import_module("jobs.demo")

    weights = "diffusion_pytorch_model.safetensors"
    for path, sizes in ((tmp_path / "drfa" / "drfa.safetensors", [(500, 500), (10_000,)]),   # 0.26 M
                        (tmp_path / "prior" / "unet" / weights, [(3, 1_000_000)]),             # 3.00 M
                        (tmp_path / "prior" / "vae" / weights, [(1000, 750)])):                # 0.75 M
        path.parent.mkdir(parents=True)
        save_file({f"w{i}": torch.zeros(s) for i, s in enumerate(sizes)}, str(path))
    about = demo.demo_about(demo.DemoConfig(drfa_steps=7, prior="tiny"), str(tmp_path))
    assert "a 0.26 M-parameter DRFA trained 7 steps here" in about
    assert "a 3.00 M-parameter x4 prior UNet with a 0.75 M-parameter VAE, started from random weights" in about
    (tmp_path / "prior" / "vae" / weights).unlink()             # the small prior: a codec, no VAE weights
    about = demo.demo_about(demo.DemoConfig(drfa_steps=7), str(tmp_path))
    assert "prior UNet with no VAE (a lossless pixel codec), started from d2vr's shipped prior" in about
    assert "fine-tuned 10 steps here; the 4-step student started from d2vr's shipped student" in about
    assert "was distilled 12 steps here" in about and "the 'light' degradation" in about
    about = demo.demo_about(demo.DemoConfig(student="", degrade="medium"), str(tmp_path))
    assert "student started from a copy of the prior (the paper's start)" in about
    assert "the 'medium' degradation" in about
