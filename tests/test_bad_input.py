"""Bad inputs and bad flags (#17): every input accounted for, nothing outside --dst, one-line errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from pipelines.common import storage, video
from pipelines.data.shards import ShardConfig, build_shards
from pipelines.restore import manifest
from pipelines.restore.archive import restore_archive
from pipelines.restore.config import RestoreConfig
from pipelines.restore.manifest import read_manifest
from tests.media import textured_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def odd_folder(root) -> str:
    """real.mp4, a valid symlink to it, a dangling and a looping symlink, a FIFO."""
    src = root / "src"
    src.mkdir()
    video.write_video(str(src / "real.mp4"), textured_frames(4, 32, 48), fps=25, crf=0, preset="ultrafast")
    os.symlink("real.mp4", src / "link.mp4")
    os.symlink("gone.mp4", src / "dangling.mp4")
    os.symlink("loop.mp4", src / "loop.mp4")
    os.mkfifo(src / "fifo.mp4")
    return str(src)


WANT = {"dangling.mp4": "dangling symlink", "loop.mp4": "symlink loop", "fifo.mp4": "not a regular file (FIFO)"}


def test_restore_follows_links_and_reports_every_other_entry(tmp_path):
    src, dst = odd_folder(tmp_path), str(tmp_path / "dst")
    summary = restore_archive(RestoreConfig(src=src, dst=dst, ray=False, tile=0, preset="ultrafast"))
    rows = {r["relpath"]: r for r in read_manifest(storage.join(dst, "manifest.parquet")).values()}
    assert set(rows) == {"real.mp4", "link.mp4", *WANT}
    assert rows["link.mp4"]["status"] == rows["real.mp4"]["status"] == "done"
    assert video.probe(os.path.join(dst, "link.mp4")).frames == 4
    for name, reason in WANT.items():
        assert rows[name]["status"] == "failed" and reason in rows[name]["error"], rows[name]
    assert (summary["videos"], summary["restored"], summary["failed"]) == (5, 2, 3)


def test_build_shards_agrees_with_restore_on_odd_entries(tmp_path):
    src, dst = odd_folder(tmp_path), str(tmp_path / "shards")
    summary = build_shards(ShardConfig(src=src, dst=dst, use_ray=False, clip_len=2, stride=2, size=32,
                                       progress=False))
    failures = pd.read_parquet(os.path.join(dst, "failures.parquet"))
    got = dict(zip(failures["relpath"], failures["error"]))
    assert set(got) == set(WANT)
    for name, reason in WANT.items():
        assert reason in got[name], got[name]       # not "empty file" / "file not found"
    assert (summary["videos"], summary["videos_processed"], summary["videos_failed"]) == (5, 2, 3)


def test_restore_never_writes_outside_dst(tmp_path, monkeypatch):
    """A source key with '..' segments (legal on S3) gets a failed row; nothing is written above --dst."""
    src = tmp_path / "archive" / "src"
    src.mkdir(parents=True)
    video.write_video(str(src / "ok.mp4"), textured_frames(3, 32, 48), fps=25, crf=0, preset="ultrafast")
    dst = tmp_path / "archive" / "out" / "x"      # its "a/../../../" is tmp_path/archive
    evil = f"{src}/a/../../../escaped.mp4"        # what an S3 listing can return; no local fs holds it
    listing = {str(src / "ok.mp4"): os.path.getsize(src / "ok.mp4"), evil: os.path.getsize(src / "ok.mp4")}
    real_list_files = storage.list_files
    monkeypatch.setattr(storage, "list_sources", lambda root: ({u: (n, f"size={n}") for u, n in listing.items()}, {}))
    monkeypatch.setattr(storage, "list_files",
                        lambda root: dict(listing) if str(root) == str(src) else real_list_files(root))
    os.makedirs(f"{src}/a", exist_ok=True)          # so that the path resolves locally too
    os.link(src / "ok.mp4", tmp_path / "escaped.mp4")   # ... to a real video
    before = set(os.listdir(tmp_path)) | set(os.listdir(tmp_path / "archive"))
    monkeypatch.setattr(storage, "relative_to",   # the S3 flavour: the key's tail, not normalised
                        lambda url, base: url[len(str(base).rstrip("/")) + 1:])
    summary = restore_archive(RestoreConfig(src=str(src), dst=str(dst), ray=False, tile=0, preset="ultrafast"))
    assert set(os.listdir(tmp_path)) | set(os.listdir(tmp_path / "archive")) == before | {"out"}
    assert [p.name for p in tmp_path.rglob("escaped*")] == ["escaped.mp4"]    # the source only
    rows = read_manifest(str(dst / "manifest.parquet"))
    assert rows[evil]["status"] == "failed" and "'..'" in rows[evil]["error"] and "a/../../../escaped.mp4" in rows[evil]["error"]
    assert (summary["restored"], summary["failed"]) == (1, 1)
    with pytest.raises(ValueError, match="outside --dst"):
        manifest._output_url(RestoreConfig(src=str(src), dst=str(dst)), "a/../../x.mp4")


def test_unsafe_relpath():
    assert storage.unsafe_relpath("a/b.mp4") == ""
    for bad in ("../x.mp4", "a/../../x.mp4", "/etc/x.mp4", "a//b.mp4", "./a.mp4"):
        assert storage.unsafe_relpath(bad), bad


def test_build_shards_records_videos_shorter_than_clip_len(tmp_path, capsys):
    src, dst = tmp_path / "src", str(tmp_path / "shards")
    src.mkdir()
    video.write_video(str(src / "short.mp4"), textured_frames(4, 32, 48), fps=25, crf=0, preset="ultrafast")
    video.write_video(str(src / "long.mp4"), textured_frames(10, 32, 48), fps=25, crf=0, preset="ultrafast")
    cfg = ShardConfig(src=str(src), dst=dst, use_ray=False, clip_len=8, stride=8, size=32)
    summary = build_shards(cfg)
    assert summary["clips"] == 1 and summary["videos_without_clips"] == 1, summary
    (entry,) = summary["no_clips"]
    assert entry["relpath"] == "short.mp4" and "4 frames" in entry["reason"] and "--clip-len 8" in entry["reason"]
    assert "short.mp4: 0 clips: 4 frames" in capsys.readouterr().out
    again = build_shards(cfg)                       # still reported by a re-run that skips it
    assert again["videos_skipped"] == 2 and again["no_clips"] == summary["no_clips"]


def test_build_shards_on_one_special_file(tmp_path):
    src = odd_folder(tmp_path)
    summary = build_shards(ShardConfig(src=os.path.join(src, "fifo.mp4"), dst=str(tmp_path / "s"), use_ray=False,
                                       progress=False))
    failures = pd.read_parquet(tmp_path / "s" / "failures.parquet").to_dict("records")
    assert summary["videos_failed"] == 1
    assert [(f["relpath"], f["error"]) for f in failures] == [("fifo.mp4", "not a regular file (FIFO)")]


def cut_at_a_packet_boundary(path: str, out: str, keep: int) -> None:
    """`out`: the faststart MP4 `path` cut right after its first `keep` frames' packets, so that
    it demuxes cleanly as a shorter video while its sample table still declares every frame."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        starts = [p.pos for p in container.demux(stream) if p.size]
    with open(path, "rb") as f:
        data = f.read()
    with open(out, "wb") as f:
        f.write(data[:starts[keep]])


def test_an_mp4_cut_at_a_packet_boundary_is_a_failed_row_in_both_jobs(tmp_path):
    import av
    import numpy as np

    src = tmp_path / "src"
    src.mkdir()
    whole = str(tmp_path / "whole.mp4")
    with av.open(whole, "w", options={"movflags": "faststart"}) as container:   # sample table first
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for frame in textured_frames(12, 32, 48):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    cut_at_a_packet_boundary(whole, str(src / "cut.mp4"), keep=7)
    os.replace(whole, src / "whole.mp4")
    with pytest.raises(video.VideoError, match="truncated: 7 of the 12 frames"):
        video.probe(str(src / "cut.mp4"))

    shards = build_shards(ShardConfig(src=str(src), dst=str(tmp_path / "shards"), use_ray=False, clip_len=2,
                                      stride=2, size=32, progress=False))
    failures = pd.read_parquet(tmp_path / "shards" / "failures.parquet").to_dict("records")
    assert [(f["relpath"], "truncated: 7 of the 12" in f["error"]) for f in failures] == [("cut.mp4", True)]
    assert (shards["videos_processed"], shards["videos_failed"]) == (1, 1)

    dst = str(tmp_path / "dst")
    restored = restore_archive(RestoreConfig(src=str(src), dst=dst, ray=False, tile=0, preset="ultrafast"))
    rows = {r["relpath"]: r for r in read_manifest(storage.join(dst, "manifest.parquet")).values()}
    assert rows["whole.mp4"]["status"] == "done" and rows["cut.mp4"]["status"] == "failed"
    assert "truncated: 7 of the 12" in rows["cut.mp4"]["error"]
    assert not os.path.exists(os.path.join(dst, "cut.mp4"))
    assert (restored["restored"], restored["failed"]) == (1, 1)


def test_build_shards_exits_1_when_every_video_fails_for_a_reason_not_its_own(tmp_path):
    """A dst whose parts/ cannot be made (a file is there): every video fails at write, which is
    the setup's fault, not the videos': a failed row with error_kind "internal" and exit 1."""
    src, dst = tmp_path / "src", tmp_path / "shards"
    src.mkdir()
    dst.mkdir()
    video.write_video(str(src / "a.mp4"), textured_frames(4, 32, 48), fps=25, crf=0, preset="ultrafast")
    (dst / "parts").write_text("not a folder")
    job = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "build_shards.py"), "--src", str(src),
                          "--dst", str(dst), "--no-use-ray", "--clip-len", "2", "--stride", "2", "--size", "32"],
                         capture_output=True, text=True, timeout=120)
    assert job.returncode == 1, job.stderr[-2000:]
    assert job.stderr.strip().splitlines()[-1].startswith("build_shards.py: error: no video sharded; 1 failed for a reason that is not")
    (row,) = pd.read_parquet(dst / "failures.parquet").to_dict("records")
    assert row["relpath"] == "a.mp4" and row["error_kind"] == "internal"

    bad = tmp_path / "bad"                      # only the input's fault: rows, exit 0
    bad.mkdir()
    (bad / "text.mp4").write_text("not a video")
    job = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "build_shards.py"), "--src", str(bad),
                          "--dst", str(tmp_path / "s2"), "--no-use-ray"], capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr[-2000:]
    (row,) = pd.read_parquet(tmp_path / "s2" / "failures.parquet").to_dict("records")
    assert row["error_kind"] == "input"


def test_refused_s3_credentials_are_one_line_naming_the_flag_and_url(s3_bucket, tmp_path):
    """A real S3 server on loopback answering 403 (wrong secret): both jobs exit 2 with one line
    naming the flag and the URL, before anything is written."""
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY="wrong")
    runs = {"--src": ["jobs/restore.py", "--src", f"{s3_bucket}/raw", "--dst", str(tmp_path / "out"), "--no-ray"],
            "--dst": ["jobs/build_shards.py", "--src", REPO + "/tests", "--dst", f"{s3_bucket}/shards", "--no-use-ray"]}
    for flag, cmd in runs.items():
        job = subprocess.run([sys.executable, os.path.join(REPO, cmd[0]), *cmd[1:]], env=env, capture_output=True,
                             text=True, timeout=120)
        url = cmd[cmd.index(flag) + 1]
        assert job.returncode == 2, job.stderr[-2000:]
        (line,) = job.stderr.strip().splitlines()
        assert f"error: {flag} {url}: access denied" in line, line
    assert not (tmp_path / "out").exists()


def test_a_restore_rerun_removes_the_part_files_a_killed_run_left(tmp_path):
    """#17 item 5 for restore: `.part` temporaries of a killed writer go at the re-run; a user's
    file that merely ends in .part stays."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    (dst / "sub").mkdir(parents=True)
    src.mkdir()
    video.write_video(str(src / "a.mp4"), textured_frames(3, 32, 48), fps=25, crf=0, preset="ultrafast")
    stale = [dst / ".a.mp4.0a1b2c3d.part", dst / "sub" / ".manifest.parquet.k2j_x9q0.part"]
    for path in stale:
        path.write_bytes(b"left by a killed writer")
    (dst / "notes.part").write_text("a user's file")
    summary = restore_archive(RestoreConfig(src=str(src), dst=str(dst), ray=False, tile=0, preset="ultrafast"))
    assert summary["restored"] == 1
    assert not any(p.exists() for p in stale)
    assert (dst / "notes.part").read_text() == "a user's file"
