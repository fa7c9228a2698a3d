"""Shot-parallel restoration (`pipelines.restore.segments`, `--frames-per-task`): segments on two
actors give the frames of the sequential restoration, a killed run resumes per segment, and
`--batch-shots` restores several segments in lockstep without changing them.

The input is real footage with real cuts: bikes.mp4's frames 24-35 (a cut at 30) then
carphone.mp4's first 8 frames (a cut at the join): shots of 6, 6 and 8 frames, shrunk to 96x40
as the low-res input, with bigbuckbunny's audio track. Outputs are encoded
losslessly (x264 --crf 0), so decoded frames compare exactly what was restored.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from pipelines.common import storage, video
from pipelines.common.paths import REPO_ROOT
from pipelines.common.samples import sample_video
from pipelines.restore.archive import restore_archive
from pipelines.restore.config import RestoreConfig
from pipelines.restore.manifest import read_manifest
from pipelines.restore.segments import SEGMENTS_DIR, group_shots
from tests.test_restore import tiny_model_dir

FILM_FRAMES = 20


@pytest.fixture(scope="module")
def film(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("film")
    pieces = [video.read_frames(sample_video("bikes"), 24, 12), video.read_frames(sample_video("carphone"), 0, 8)]
    frames = [cv2.resize(f, (96, 40), interpolation=cv2.INTER_AREA) for piece in pieces for f in piece]
    with video.VideoWriter(str(folder / "film.mp4"), fps=25, crf=0, preset="ultrafast",
                           audio_from=sample_video("bigbuckbunny")) as writer:
        for f in frames:
            writer.write(f)
    return str(folder)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return tiny_model_dir(tmp_path_factory.mktemp("seg_model"))


def _cfg(src, dst, model, **kw) -> RestoreConfig:
    return RestoreConfig(src=src, dst=str(dst), model=model, crf=0, preset="ultrafast", tile=0, num_cpus=1,
                         progress_every_s=30, **kw)


@pytest.fixture(scope="module")
def reference(film, model, tmp_path_factory) -> np.ndarray:
    """The film restored sequentially in this process: one task, the whole video."""
    dst = tmp_path_factory.mktemp("reference")
    assert restore_archive(_cfg(film, dst, model, ray=False))["restored"] == 1
    row = _row(dst)
    assert row["segments"] == 0 and row["shots"] == 3
    return video.read_frames(str(dst / "film.mp4"))


def _row(dst) -> dict:
    (row,) = read_manifest(storage.join(str(dst), "manifest.parquet")).values()
    return row


def test_group_shots_never_cuts_a_shot_and_keeps_groups_near_the_target():
    segs = group_shots([0, 30, 76, 137, 187, 242], 250, 80)     # bikes.mp4's shots
    assert [(s["start"], s["count"], s["starts"]) for s in segs] == [
        (0, 76, [0, 30]), (76, 61, [0]), (137, 50, [0]), (187, 63, [0, 55])]
    assert [(s["start"], s["count"]) for s in group_shots([0, 10], 500, 50)] == [(0, 10), (10, 490)]  # a long shot: alone
    assert len(group_shots([0], 40, 50)) == 1


def test_shot_parallel_on_two_actors_equals_the_sequential_restoration(film, model, reference, ray_local, s3_bucket,
                                                                       tmp_path):
    """Input on the loopback S3 server, segments and output there too (the join reads them back)."""
    src, dst = f"{s3_bucket}/raw", f"{s3_bucket}/restored"
    storage.upload_file(os.path.join(film, "film.mp4"), f"{src}/film.mp4")
    par = restore_archive(_cfg(src, dst, model, concurrency=2, frames_per_task=8))
    assert par["restored"] == 1
    with storage.local_copy(f"{dst}/film.mp4") as out:
        a, b, info = reference, video.read_frames(out), video.probe(out)
    assert a.shape == b.shape == (FILM_FRAMES, 160, 384, 3)
    assert np.array_equal(a, b)                                  # frame for frame, bit for bit
    assert float(np.abs(a.astype(np.int16)[1:] - a[:-1]).mean()) > 1    # and not a frozen frame
    row = _row(dst)
    assert row["segments"] == 3 and row["segments_reused"] == 0 and row["shots"] == 3
    assert 1 <= len(row["worker"].split(",")) <= 2               # the actors that restored its segments
    assert info.has_audio and info.audio_codec == "aac" and info.frames == FILM_FRAMES
    assert storage.exists(f"{dst}/film.mp4.done")
    assert not storage.list_files(f"{dst}/{SEGMENTS_DIR}")       # removed after the join


def test_a_killed_run_resumes_from_its_finished_segments(film, model, reference, tmp_path):
    dst = tmp_path / "out"
    seg_dir = dst / SEGMENTS_DIR / "film.mp4"
    cmd = [sys.executable, os.path.join(REPO_ROOT, "jobs", "restore.py"), "--src", film, "--dst", str(dst),
           "--model", model, "--crf", "0", "--preset", "ultrafast", "--tile", "0", "--no-ray",
           "--frames-per-task", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        if seg_dir.is_dir() and any(n.endswith(".mp4.done") for n in os.listdir(seg_dir)):
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    plan = json.loads((seg_dir / "plan.json").read_text())
    kept = sorted(n for n in os.listdir(seg_dir) if n.endswith(".mp4.done"))
    assert 1 <= len(kept) < len(plan["segments"]) == 3 and not (dst / "film.mp4").exists()
    stamps = {n: os.stat(seg_dir / n[:-len(".done")]).st_mtime_ns for n in kept}

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"{len(plan['segments'])} segments ({len(kept)} finished earlier)" in rerun.stdout
    row = _row(dst)
    assert row["status"] == "done" and row["segments_reused"] == len(kept)
    assert row["segments"] == len(plan["segments"])
    # The re-run restored the rest only: what it reports, and what the finished segments were.
    assert stamps == {n: stamps[n] for n in kept}
    # The joined video equals one restored in a single uninterrupted run.
    assert np.array_equal(video.read_frames(str(dst / "film.mp4")), reference)


def test_batch_shots_restores_segments_in_lockstep_as_one_at_a_time(film, model, reference, tmp_path):
    two = restore_archive(_cfg(film, tmp_path / "b2", model, ray=False, frames_per_task=8, batch_shots=2))
    assert two["restored"] == 1
    a = reference.astype(np.int16)
    b = video.read_frames(str(tmp_path / "b2" / "film.mp4")).astype(np.int16)
    assert a.shape == b.shape
    # A UNet batch of 2 sums in another order than batch 1 (~2e-6 in [0, 1], measured): the rare
    # pixel on a rounding edge of 8 bits moves a level, and YUV 4:2:0 spreads it over its block.
    diff = np.abs(a - b)
    psnr = 10 * np.log10(255 ** 2 / max(float((diff ** 2).mean()), 1e-12))
    assert (diff > 0).mean() < 1e-3 and psnr > 70, ((diff > 0).mean(), psnr)
    bic = [restore_archive(RestoreConfig(src=film, dst=str(tmp_path / f"bic{b}"), model="bicubic", crf=0,
                                         preset="ultrafast", ray=False, frames_per_task=8, batch_shots=b))
           for b in (1, 3)]
    assert all(s["restored"] == 1 for s in bic)
    assert np.array_equal(video.read_frames(str(tmp_path / "bic1" / "film.mp4")),
                          video.read_frames(str(tmp_path / "bic3" / "film.mp4")))
