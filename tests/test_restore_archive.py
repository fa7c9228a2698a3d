"""restore_archive end to end: a real S3 server, Ray Data actors, the tiny diffusion model.

The archive: a piece of the real bikes.mp4 spanning its cut at frame 30, a synthetic
two-shot video with an AAC track, the second shot of that video on its own, and a corrupt
file. Inputs and outputs are lossless (x264 CRF 0), so the restored second shot can be
compared exactly with the same shot restored as a video of its own.
"""
from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pytest

from pipelines.common import storage, video
from pipelines.common.samples import sample_video
from pipelines.restore.archive import restore_archive
from pipelines.restore.config import RestoreConfig
from pipelines.restore.manifest import read_manifest
from tests.media import corrupt_file, textured_frames
from tests.test_restore import tiny_model_dir

LR_W, LR_H = 48, 32           # LR size of the synthetic videos (the tiny flow net needs >= 32 px)
SHOT = 5                      # frames per synthetic shot


def two_shots() -> np.ndarray:
    a = textured_frames(SHOT, LR_H, LR_W, seed=101).astype(np.int16) + np.array([50, -20, -20])
    b = textured_frames(SHOT, LR_H, LR_W, seed=102).astype(np.int16) + np.array([-30, -30, 60])
    return np.clip(np.concatenate([a, b]), 0, 255).astype(np.uint8)


def build_archive(folder) -> dict[str, str]:
    """Local files for the archive; {relative path: local path}."""
    os.makedirs(folder / "real")
    os.makedirs(folder / "synthetic")
    os.makedirs(folder / "broken")
    bikes = str(folder / "real" / "bikes_cut.mp4")
    frames = (cv2.resize(f, (64, 32), interpolation=cv2.INTER_AREA)
              for f in video.iter_frames(sample_video("bikes"), start=24, count=12))     # cut at 6
    video.write_video(bikes, frames, fps=25, crf=0, preset="ultrafast")
    both, alone = str(folder / "synthetic" / "two_shots.mp4"), str(folder / "synthetic" / "shot2_alone.mp4")
    frames = two_shots()
    with video.VideoWriter(both, fps=25, crf=0, preset="ultrafast", audio_from=sample_video("bigbuckbunny")) as w:
        for f in frames:
            w.write(f)
    video.write_video(alone, frames[SHOT:], fps=25, crf=0, preset="ultrafast")
    bad = corrupt_file(str(folder / "broken" / "bad.mp4"), "garbage")
    (folder / "notes.txt").write_text("not a video: ignored")
    return {"real/bikes_cut.mp4": bikes, "synthetic/two_shots.mp4": both,
            "synthetic/shot2_alone.mp4": alone, "broken/bad.mp4": bad}


def versions(root: str) -> dict[str, tuple]:
    """{url: (size, ETag, modified)} of every object under root."""
    fs, path = storage.filesystem(root)
    fs.invalidate_cache()
    return {p: (i.get("size"), i.get("ETag"), str(i.get("LastModified")))
            for p, i in fs.find(path, detail=True).items()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny_archive"))


@pytest.mark.slow
def test_archive_on_s3_with_ray_resumes_and_resets_state_at_cuts(s3_bucket, ray_local, model_dir, tmp_path):
    files = build_archive(tmp_path / "archive")
    src, dst = f"{s3_bucket}/archive/v1", f"{s3_bucket}/restored"
    for rel, local in files.items():
        storage.upload_file(local, storage.join(src, rel))
    storage.upload_file(str(tmp_path / "archive" / "notes.txt"), storage.join(src, "notes.txt"))
    cfg = RestoreConfig(src=src, dst=dst, model=model_dir, crf=0, preset="ultrafast", concurrency=2,
                        num_cpus=1, tile=0, progress_every_s=2)

    # 1. First run: three restored videos and one failed row.
    summary = restore_archive(cfg)
    assert (summary["videos"], summary["restored"], summary["failed"], summary["skipped"]) == (4, 3, 1, 0)
    rows = read_manifest(storage.join(dst, "manifest.parquet"))
    assert {r["relpath"]: r["status"] for r in rows.values()} == {
        "real/bikes_cut.mp4": "done", "synthetic/two_shots.mp4": "done",
        "synthetic/shot2_alone.mp4": "done", "broken/bad.mp4": "failed"}
    bad = rows[storage.join(src, "broken/bad.mp4")]
    assert bad["error_kind"] == "input" and "bad.mp4" in bad["error"] and "not a readable video" in bad["error"]
    assert not storage.exists(storage.join(dst, "broken/bad.mp4"))

    # 2. Outputs: x4, same frame count and fps, audio carried over, one marker each.
    for rel, local in files.items():
        if rel.startswith("broken"):
            continue
        out, row = storage.join(dst, rel), rows[storage.join(src, rel)]
        info_in, info_out = video.probe(local), video.probe(out)
        assert (info_out.frames, info_out.fps_fraction) == (info_in.frames, info_in.fps_fraction)
        assert (info_out.width, info_out.height) == (4 * info_in.width, 4 * info_in.height)
        assert info_out.has_audio == info_in.has_audio == (rel == "synthetic/two_shots.mp4")
        assert row["frames"] == info_in.frames and row["output"] == out and row["output_size"] == storage.size(out)
        assert storage.exists(out + ".done")
    assert video.probe(storage.join(dst, "synthetic/two_shots.mp4")).audio_codec == "aac"
    assert rows[storage.join(src, "real/bikes_cut.mp4")]["shots"] == 2           # the real cut was found
    assert rows[storage.join(src, "synthetic/two_shots.mp4")]["shots"] == 2

    # 3. The state was reset at the cut: the second shot is restored exactly as on its own.
    restored = video.read_frames(storage.join(dst, "synthetic/two_shots.mp4"))
    alone = video.read_frames(storage.join(dst, "synthetic/shot2_alone.mp4"))
    np.testing.assert_array_equal(restored[SHOT:], alone)
    assert np.abs(restored[SHOT - 1].astype(int) - alone[0].astype(int)).mean() > 5   # not trivially equal

    # 4. Nothing partial or stray under dst.
    listed = sorted(storage.relative_to(u, dst) for u in storage.glob(storage.join(dst, "**")))
    assert listed == sorted(["manifest.parquet"] + [f"{r}{x}" for r in files if not r.startswith("broken")
                                                     for x in ("", ".done")])

    # 5. Second run: no work, nothing rewritten; the manifest keeps its rows.
    before = versions(dst)
    again = restore_archive(cfg)
    assert (again["restored"], again["failed"], again["skipped"], again["skipped_failed"], again["frames"]) == \
        (0, 0, 3, 1, 0)
    assert versions(dst) == before

    # 6. A lost output is restored again, alone (here in-process); the manifest merges.
    storage.remove(storage.join(dst, "synthetic/shot2_alone.mp4"))
    third = restore_archive(dataclasses.replace(cfg, ray=False))
    assert (third["restored"], third["skipped"]) == (1, 2)
    assert [r["relpath"] for r in third["rows"]] == ["synthetic/shot2_alone.mp4"]
    # (exactly: one torch thread here as in the actors; thread counts change float rounding)
    np.testing.assert_array_equal(video.read_frames(storage.join(dst, "synthetic/shot2_alone.mp4")), alone)
    assert len(read_manifest(storage.join(dst, "manifest.parquet"))) == 4
