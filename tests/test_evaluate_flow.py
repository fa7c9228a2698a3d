"""Flow evaluation on held-out degraded pairs (pipelines/evaluation/flow_eval.py, jobs/evaluate_flow.py)."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import pytest
import torch

from pipelines.data.flow_pairs import flow_pairs, frame_split, load_frames
from pipelines.evaluation.flow_eval import METRICS, FlowEvalConfig, column, evaluate_flow

PRESETS = ("clean", "light", "medium", "heavy")


@pytest.fixture(scope="module")
def heldout_bikes():
    return load_frames(["bikes"], "heldout", 0.2, min_side=128)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from models.flow import build, flow_preset, save

    torch.manual_seed(0)
    return save(build(flow_preset("tiny", "drfa")), tmp_path_factory.mktemp("ck") / "drfa.safetensors")


def test_frame_split_holds_out_the_last_frames():
    train, held = frame_split(250, 0.2)
    assert (train, held) == (range(200), range(200, 250))
    assert frame_split(3, 0.1)[1] == range(2, 3)        # at least one frame held out
    with pytest.raises(ValueError, match="holdout"):
        frame_split(10, 1.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        frame_split(1, 0.5)


def test_pairs_are_deterministic_and_every_preset_degrades_the_same_pairs(heldout_bikes):
    a = flow_pairs(heldout_bikes, 2, seed=7, presets=("clean", "heavy"))
    b = flow_pairs(heldout_bikes, 1, seed=7, presets=("heavy",), start=1)
    assert a["clean"]["img1"].shape == (2, 3, 64, 64) and a["clean"]["flow"].shape == (2, 2, 64, 64)
    assert torch.equal(a["heavy"]["img1"][1:], b["heavy"]["img1"])       # pair i depends on (seed, i) only
    assert torch.equal(a["clean"]["flow"], a["heavy"]["flow"])           # same geometry under every preset
    assert torch.equal(a["clean"]["valid"], a["heavy"]["valid"])
    assert (a["clean"]["img1"] - a["heavy"]["img1"]).abs().mean() > 0.01  # but different degradations
    c = flow_pairs(heldout_bikes, 1, seed=8, presets=("clean",))
    assert not torch.equal(c["clean"]["flow"], a["clean"]["flow"][:1])


def test_evaluate_flow_table_metrics_and_pngs(tmp_path, tiny_checkpoint):
    # Pure camera translations of at most 4 px at 64 px: DIS must be nearly exact on clean pairs.
    cfg = FlowEvalConfig(checkpoint=(f"tiny={tiny_checkpoint}",), baselines=("dis", "zero"), frames_from=("bikes",),
                         pairs=3, max_flow=4.0, motion="translation", out=str(tmp_path), threads=1)
    result = evaluate_flow(cfg, log=lambda s: None)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"tiny", "DIS", "zero"}
    for r in rows.values():
        for p in PRESETS:
            for m in METRICS:
                v = r[column(p, m)]
                assert math.isfinite(v) and (v >= 0 if m == "epe" else 0 <= v <= 1), (r["method"], p, m, v)

    # Pooling over all valid pixels: "zero" scores the mean |GT flow| of the valid pixels.
    clean = flow_pairs(load_frames(["bikes"], "heldout", 0.2), 3, cfg.seed, ("clean",), max_flow=4.0,
                       motion="translation")["clean"]
    assert rows["zero"]["clean_epe"] == pytest.approx(clean["flow"].norm(dim=1)[clean["valid"]].mean().item(),
                                                      rel=1e-5)
    dis = rows["DIS"]
    assert dis["clean_epe"] < 0.2 and dis["clean_1px"] > 0.95, dis
    assert dis["heavy_epe"] > dis["clean_epe"] and dis["heavy_1px"] < dis["clean_1px"], dis
    assert rows["tiny"]["clean_epe"] > dis["clean_epe"]         # an untrained network is no flow method

    table = (tmp_path / "flow_eval.md").read_text()
    assert table.count("| tiny |") == 1 and table.count("| DIS |") == 1
    assert all(f"{p} EPE" in table and f"{p} 5px %" in table for p in PRESETS)
    with open(tmp_path / "flow_eval.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["method"] for r in csv_rows] == ["tiny", "DIS", "zero"]
    assert float(csv_rows[1]["heavy_epe"]) == pytest.approx(dis["heavy_epe"])

    for p in PRESETS:
        folder = tmp_path / "examples" / p
        for name in ("img1", "img2", "gt_flow", "gt_valid", "flow_tiny", "flow_DIS", "confidence_tiny"):
            img = cv2.imread(str(folder / f"{name}.png"))
            assert img is not None and img.shape == (64, 64, 3), (p, name)
        assert not (folder / "confidence_DIS.png").exists()
        assert cv2.imread(str(tmp_path / "examples" / f"{p}.png")) is not None
    assert "best on heavy" in result["summary"]


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        evaluate_flow(FlowEvalConfig(checkpoint=(f"x={tmp_path / 'missing.safetensors'}",), out=str(tmp_path)))
    with pytest.raises(ValueError, match="presets"):
        FlowEvalConfig(presets=("clean", "foggy"))
    with pytest.raises(ValueError, match="baselines"):
        FlowEvalConfig(baselines=("raft",))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_flow(FlowEvalConfig(baselines=("none",), out=str(tmp_path)))


def test_job_parses_repeated_checkpoints(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "jobs"))  # its `_bootstrap` sibling
    from jobs.evaluate_flow import parse_args

    cfg = parse_args(["--checkpoint", "raft=a.safetensors", "--checkpoint", "drfa=b.safetensors",
                      "--presets", "clean", "heavy", "--frames-from", "carphone", "--pairs", "4"])
    assert cfg.checkpoint == ("raft=a.safetensors", "drfa=b.safetensors")
    assert cfg.presets == ("clean", "heavy") and cfg.frames_from == ("carphone",) and cfg.pairs == 4
