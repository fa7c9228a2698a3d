"""Every job goes through `ray job submit --working-dir .` to a real `ray start --head`
cluster (token auth on, as Ray 2.60 sets it), in pipeline order, with tiny settings:
build_shards -> pretrain_drfa -> train_prior -> distill -> restore -> evaluate."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.common import video
from pipelines.common.samples import sample_video
from tests.raycluster import LocalCluster

ROOT = Path(__file__).resolve().parents[1]


def _job(cluster: LocalCluster, *args: str) -> str:
    out = cluster.submit(["python", *args], timeout=900, working_dir=str(ROOT))
    assert out.returncode == 0, f"{args[0]} failed:\n{out.stdout[-4000:]}\n{out.stderr[-2000:]}"
    assert "succeeded" in (out.stdout + out.stderr), out.stdout[-2000:]
    return out.stdout


@pytest.mark.slow
def test_every_job_runs_through_ray_job_submit(tmp_path):
    # Real footage: the first 40 frames of bikes.mp4 (a cut at frame 30), 272x336.
    src = tmp_path / "videos"
    frames = video.read_frames(sample_video("bikes"), 0, 40)[:, :, 150:486]
    video.write_video(str(src / "bikes40.mp4"), frames, fps=25, crf=12, preset="ultrafast")
    lq = tmp_path / "lq"
    video.write_video(str(lq / "bikes40.mp4"), frames[:8, ::8, ::8], fps=25, crf=12, preset="ultrafast")
    gt = tmp_path / "gt"
    video.write_video(str(gt / "bikes40.mp4"), frames[:8, ::2, ::2], fps=25, crf=12,
                      preset="ultrafast")
    run = ["--storage-path", str(tmp_path / "ray"), "--num-workers", "1"]

    cluster = LocalCluster(num_cpus=4).start()
    try:
        _job(cluster, "jobs/build_shards.py", "--src", str(src), "--dst", str(tmp_path / "shards"),
             "--clip-len", "4", "--stride", "4", "--size", "128")
        manifest = pd.read_parquet(tmp_path / "shards" / "manifest.parquet")
        assert len(manifest) > 4

        _job(cluster, "jobs/pretrain_drfa.py", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "drfa"),
             "--run-name", "submit-drfa", "--steps", "2", "--batch-size", "1", "--crop", "64",
             "--loader-workers", "0", *run)
        assert (tmp_path / "drfa" / "drfa.safetensors").is_file()

        _job(cluster, "jobs/train_prior.py", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "prior"),
             "--run-name", "submit-prior", "--init", "tiny", "--steps", "4", "--vae-steps", "2",
             "--batch-size", "2", "--patch", "32", "--vae-crop", "32", "--degrade", "clean",
             "--loader-workers", "0", *run)
        assert (tmp_path / "prior" / "unet").is_dir()

        _job(cluster, "jobs/distill.py", "--shards", str(tmp_path / "shards"), "--teacher", str(tmp_path / "prior"),
             "--flow", str(tmp_path / "drfa" / "drfa.safetensors"), "--out", str(tmp_path / "student"),
             "--run-name", "submit-distill", "--steps", "1", "--batch-size", "1", "--crop", "32",
             "--clip-len", "2", "--degrade", "clean", "--tlpips-backbone", "random", "--loader-workers", "0",
             "--checkpoint-every", "1", *run)
        assert (tmp_path / "student" / "student").is_dir()

        _job(cluster, "jobs/restore.py", "--src", str(lq), "--dst", str(tmp_path / "restored"),
             "--model", str(tmp_path / "student"), "--preset", "ultrafast")
        info = video.probe(str(tmp_path / "restored" / "bikes40.mp4"))
        assert (info.frames, info.width, info.height) == (8, 168, 136)

        _job(cluster, "jobs/evaluate.py", "--gt", str(gt), "--method", f"student={tmp_path / 'restored'}",
             "--out", str(tmp_path / "eval"))
        summary = (tmp_path / "eval" / "summary.md").read_text()
        assert "student" in summary and "PSNR" in summary.upper()
    finally:
        cluster.stop()
    assert not cluster.pids(), "cluster processes left running"
