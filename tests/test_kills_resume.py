"""#17 items 5 and 6: what killed runs leave is cleaned by the next run, SIGTERM of restore
writes the manifest and exits 143, and resume is keyed on the source's content identity
(size + mtime, or S3 ETag), not its size alone."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

import cv2
import numpy as np
import pandas as pd
import pytest

from pipelines.common import storage, video
from pipelines.data.shards import InjectedFault, ShardConfig, build_shards, video_key
from pipelines.restore.archive import restore_archive
from pipelines.restore.config import RestoreConfig
from pipelines.restore.manifest import read_manifest
from tests.media import textured_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def tmpdir_root(monkeypatch):
    """A short, private system temp dir for this process and its job subprocesses (TMPDIR),
    so that what a run leaves "in /tmp" can be listed; Ray keeps its own in /tmp."""
    root = tempfile.mkdtemp(prefix="d2vr-t-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", root)
    yield root
    subprocess.run(["rm", "-rf", root], check=False)


def job_env(tmp: str) -> dict:
    return {**os.environ, "TMPDIR": tmp, "RAY_TMPDIR": "/tmp", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def parts_under(root: str) -> list[str]:
    return sorted(os.path.relpath(p, root) for p in glob.glob(f"{root}/**/.*.part", recursive=True))


def wait_for(proc: subprocess.Popen, out_path: str, text: str, timeout: float) -> str:
    """Poll the job's stdout file until `text` appears; fail if it exits or times out first."""
    end = time.time() + timeout
    while time.time() < end:
        with open(out_path) as f:
            out = f.read()
        if text in out:
            return out
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {text!r}:\n{out[-3000:]}"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {text!r} within {timeout} s")


def flat_video(path: str, colour, n: int, size: int = 32, codec: str = "libx264") -> None:
    """A lightly textured video of one colour: two colours give shards of the same size."""
    frames = np.clip(textured_frames(n, size, size, seed=3).astype(np.int16) // 8 + np.array(colour), 0, 255)
    video.write_video(path, frames.astype(np.uint8), fps=25, crf=0, preset="ultrafast", codec=codec)


def bump_mtime(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


# ------------------------------------------------------------------ item 5: leftovers, kills
def test_stale_part_sweep_removes_only_our_temporaries(tmp_path):
    dst = tmp_path / "dst"
    (dst / "shards").mkdir(parents=True)
    with storage.atomic_write(str(dst / "shards" / "v-0000.tar")) as f:      # the real naming
        f.write(b"x")
        (ours,) = [n for n in os.listdir(dst / "shards") if n.endswith(".part")]
    keep = [".notes.part", "v.tar.abcd1234.part", ".v.tar.ABCD1234.part", ".v.tar.abc.part", "x.part"]
    for name in keep:
        (dst / "shards" / name).write_text("user file")
    stale = [dst / "shards" / ours, dst / ".manifest.parquet.k2j_x9q0.part",
             dst / "shards" / ".v-0001.tar.0a1b2c3d.part"]
    for path in stale:
        path.write_text("left by a killed writer")
    removed = storage.remove_stale_parts(str(dst))
    assert sorted(removed) == sorted(map(str, stale))
    assert sorted(os.listdir(dst / "shards")) == sorted(keep + ["v-0000.tar"])


def test_run_folder_is_swept_once_its_holder_is_killed(tmpdir_root):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pipelines.common import storage\n"
        "with storage.run_tempdir() as d:\n"
        "    open(d + '/d2vr-enc-x.mp4', 'wb').write(b'0' * 1000); print(d, flush=True); time.sleep(60)")],
        cwd=REPO, env=job_env(tmpdir_root), stdout=subprocess.PIPE, text=True)
    folder = holder.stdout.readline().strip()
    assert folder.startswith(os.path.join(tmpdir_root, "d2vr-run-")) and os.path.isdir(folder)
    fds = len(os.listdir("/proc/self/fd"))
    assert storage.sweep_stale_runs() == [] and os.path.isdir(folder)    # a live run's folder stays,
    assert len(os.listdir("/proc/self/fd")) == fds                        # and no lock fd is left open
    with storage.run_tempdir() as mine:
        assert os.path.isdir(folder) and storage.temp_root() == mine
        with video.VideoWriter(os.path.join(mine, "..", "out.mp4"), fps=25) as w:   # encodes go in it
            assert w._tmp.startswith(mine + "/")
            w.write(np.zeros((16, 16, 3), np.uint8))
    assert not os.path.exists(mine) and storage.temp_root() == tmpdir_root
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.isdir(folder)                      # a SIGKILL runs no cleanup ...
    with storage.run_tempdir():                       # ... the next run removes it
        assert not os.path.exists(folder)
    assert sorted(os.listdir(tmpdir_root)) == ["out.mp4"]


def test_build_shards_sigkill_then_rerun_cleans_and_completes(tmp_path, tmpdir_root):
    """SIGKILL a real build mid-run; plant the `.part` a late Ray worker leaves (#17: one kill in
    five); the re-run removes both, finishes, and equals a clean build."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        flat_video(str(src / f"v{i}.mp4"), (40 * i, 100, 200 - 30 * i), n=48, size=48)
    job = [sys.executable, "jobs/build_shards.py", "--src", str(src), "--dst", str(tmp_path / "dst"), "--no-use-ray",
           "--clip-len", "4", "--stride", "4", "--size", "32", "--shard-mb", "0.02"]
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(job, cwd=REPO, env=job_env(tmpdir_root), stdout=out, stderr=subprocess.STDOUT)
    wait_for(proc, str(tmp_path / "out.txt"), "[build_shards] 1/6", timeout=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [n for n in os.listdir(tmpdir_root) if n.startswith("d2vr-run-")]
    assert len(left) == 1                             # the killed run's folder, still there
    late = tmp_path / "dst" / "shards" / f".{video_key('v3.mp4')}-0000.tar.q1w2e3r4.part"
    late.write_bytes(b"half a shard")
    rerun = build_shards(ShardConfig(src=str(src), dst=str(tmp_path / "dst"), use_ray=False, progress=False,
                                     clip_len=4, stride=4, size=32, shard_mb=0.02))
    assert rerun["videos_skipped"] >= 1 and rerun["videos_skipped"] + rerun["videos_processed"] == 6
    assert os.listdir(tmpdir_root) == [] and parts_under(str(tmp_path / "dst")) == []
    clean = build_shards(ShardConfig(src=str(src), dst=str(tmp_path / "clean"), use_ray=False, progress=False,
                                     clip_len=4, stride=4, size=32, shard_mb=0.02))
    assert sorted(os.listdir(tmp_path / "dst" / "shards")) == sorted(os.listdir(tmp_path / "clean" / "shards"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "dst" / "manifest.parquet"),
                                  pd.read_parquet(tmp_path / "clean" / "manifest.parquet"))
    assert clean["clips"] == rerun["clips"] > 8


@pytest.mark.slow
def test_restore_sigterm_writes_the_manifest_and_exits_143(tmp_path, tmpdir_root):
    """SIGTERM of a real restore on Ray (exit 134 and no manifest before): one line, exit
    143, the finished videos in the manifest, no run folder or `.part` left; a re-run resumes."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(8):
        flat_video(str(src / f"v{i}.mp4"), (30 * i, 90, 220 - 25 * i), n=40, size=64)
    job = [sys.executable, "jobs/restore.py", "--src", str(src), "--dst", str(dst), "--model", "bicubic",
           "--tile", "0", "--ray-address", "local", "--concurrency", "1", "--num-cpus", "1", "--preset", "slow"]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(job, cwd=REPO, env=job_env(tmpdir_root), stdout=out, stderr=err)
    wait_for(proc, str(tmp_path / "out.txt"), "[restore] done", timeout=120)
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    stderr = (tmp_path / "err.txt").read_text()
    assert rc == 143, stderr[-3000:]
    last = [line for line in stderr.splitlines() if "restore.py" in line]
    assert last and "terminated by SIGTERM" in last[-1] and "manifest" in last[-1], stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    rows = read_manifest(str(dst / "manifest.parquet"))
    done = {r["relpath"] for r in rows.values() if r["status"] == "done"}
    assert 1 <= len(done) < 8 and all(r["status"] == "done" for r in rows.values())
    time.sleep(2)                                     # the actor's process ends after the driver
    assert [n for n in os.listdir(tmpdir_root) if n.startswith("d2vr-")] == []
    assert parts_under(str(dst)) == []
    again = restore_archive(RestoreConfig(src=str(src), dst=str(dst), ray=False, tile=0, preset="ultrafast"))
    assert again["skipped"] >= len(done) and again["skipped"] + again["restored"] == 8
    assert len(read_manifest(str(dst / "manifest.parquet"))) == 8


def test_restore_no_ray_sigterm_abandons_the_video_in_flight(tmp_path, tmpdir_root):
    """In-process (--no-ray), SIGTERM lands inside a video's encode: that video leaves no output,
    no partial encode and no `.part`; the finished ones are in the manifest; exit 143."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for i in range(6):
        flat_video(str(src / f"v{i}.mp4"), (30 * i, 90, 220 - 25 * i), n=40, size=64)
    job = [sys.executable, "jobs/restore.py", "--src", str(src), "--dst", str(dst), "--model", "bicubic",
           "--tile", "0", "--no-ray", "--preset", "slow"]
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(job, cwd=REPO, env=job_env(tmpdir_root), stdout=out, stderr=err)
    wait_for(proc, str(tmp_path / "out.txt"), "[restore] done", timeout=120)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, (tmp_path / "err.txt").read_text()[-3000:]
    (line,) = (tmp_path / "err.txt").read_text().strip().splitlines()
    assert line.startswith("restore.py: terminated by SIGTERM:") and str(dst / "manifest.parquet") in line
    rows = read_manifest(str(dst / "manifest.parquet"))
    done = sorted(r["relpath"] for r in rows.values() if r["status"] == "done")
    assert 1 <= len(done) < 6 and len(rows) == len(done)
    assert sorted(n for n in os.listdir(dst) if n.endswith(".mp4")) == done    # no output of the one in flight
    assert os.listdir(tmpdir_root) == [] and parts_under(str(dst)) == []


# ------------------------------------------------------------------ item 6: resume identity
def shard_colours(dst: str) -> dict[str, list[str]]:
    """{shard name: the dominant channel ('r'/'b') of each frame in it}."""
    out = {}
    for path in sorted(glob.glob(f"{dst}/shards/*.tar")):
        with tarfile.open(path) as tar:
            names = [m for m in tar.getmembers() if m.name.endswith(".jpg")]
            frames = [cv2.imdecode(np.frombuffer(tar.extractfile(m).read(), np.uint8), cv2.IMREAD_COLOR) for m in names]
        out[os.path.basename(path)] = ["r" if f[..., 2].mean() > f[..., 0].mean() else "b" for f in frames]
    return out


def test_changed_source_is_rebuilt_without_stale_shards(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path, dst = str(src / "v.mp4"), str(tmp_path / "dst")
    cfg = ShardConfig(src=str(src), dst=dst, use_ray=False, progress=False, clip_len=4, stride=4, size=32,
                      shard_mb=0.02)

    # 1. Interrupted after one shard; the source then changes (same length: same shard sizes).
    flat_video(path, (220, 60, 40), n=32)
    with pytest.raises(InjectedFault):
        build_shards(dataclasses.replace(cfg, fail_after_shards=1))
    assert set(shard_colours(dst)) == {f"{video_key('v.mp4')}-0000.tar"}
    flat_video(path, (40, 60, 220), n=32)
    bump_mtime(path)
    resumed = build_shards(cfg)
    colours = shard_colours(dst)
    assert resumed["videos_processed"] == 1 and len(colours) >= 3
    assert {c for cs in colours.values() for c in cs} == {"b"}, colours      # not one red shard kept
    part = json.loads(storage.read_text(os.path.join(dst, "parts", f"{video_key('v.mp4')}.json")))
    assert part["video"]["source_version"] == storage.source_version(path)

    # 2. A finished video whose source changed (shorter): rebuilt, its old extra shards gone.
    flat_video(path, (220, 60, 40), n=16)
    bump_mtime(path)
    again = build_shards(cfg)
    colours = shard_colours(dst)
    assert again["videos_processed"] == 1 and again["videos_skipped"] == 0
    assert {c for cs in colours.values() for c in cs} == {"r"} and len(colours) == again["shards"] < 3
    manifest = pd.read_parquet(os.path.join(dst, "manifest.parquet"))
    assert len(manifest) == again["clips"] == 4 and set(manifest["shard"]) == {f"shards/{n}" for n in colours}
    assert build_shards(cfg)["videos_skipped"] == 1                          # unchanged now: skipped


def first_frame_mean(path: str) -> np.ndarray:
    return next(video.iter_frames(path)).reshape(-1, 3).mean(0)


def test_changed_input_of_the_same_size_is_restored_again(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    path, out = str(src / "v.mkv"), str(dst / "v.mkv")
    cfg = RestoreConfig(src=str(src), dst=str(dst), ray=False, tile=0, preset="ultrafast", codec="libx264")
    flat_video(path, (220, 60, 40), n=4, codec="rawvideo")
    size = os.path.getsize(path)
    assert restore_archive(cfg)["restored"] == 1 and first_frame_mean(out)[0] > 150
    flat_video(path, (40, 60, 220), n=4, codec="rawvideo")               # same size, other content
    bump_mtime(path)
    assert os.path.getsize(path) == size
    again = restore_archive(cfg)
    assert (again["restored"], again["skipped"]) == (1, 0) and first_frame_mean(out)[2] > 150
    (row,) = read_manifest(str(dst / "manifest.parquet")).values()
    assert row["source_version"] == storage.source_version(path)
    assert json.loads(storage.read_text(out + ".done"))["source_version"] == row["source_version"]
    assert restore_archive(cfg)["skipped"] == 1

    # The input is replaced by garbage of the same size: a failed row, and no stale output left.
    with open(path, "r+b") as f:
        f.write(os.urandom(size))
    bump_mtime(path)
    broken = restore_archive(cfg)
    assert broken["failed"] == 1 and not os.path.exists(out) and not os.path.exists(out + ".done")


def test_changed_s3_input_is_restored_again(s3_bucket, tmp_path):
    """On S3 the identity is the ETag: a same-size object with new content is redone."""
    src, dst = f"{s3_bucket}/src", str(tmp_path / "dst")
    local = str(tmp_path / "v.mkv")
    cfg = RestoreConfig(src=src, dst=dst, ray=False, tile=0, preset="ultrafast")
    flat_video(local, (220, 60, 40), n=3, codec="rawvideo")
    storage.upload_file(local, storage.join(src, "v.mkv"))
    assert restore_archive(cfg)["restored"] == 1
    flat_video(local, (40, 60, 220), n=3, codec="rawvideo")
    storage.upload_file(local, storage.join(src, "v.mkv"))
    again = restore_archive(cfg)
    assert (again["restored"], again["skipped"]) == (1, 0) and first_frame_mean(f"{dst}/v.mkv")[2] > 150
    (row,) = read_manifest(f"{dst}/manifest.parquet").values()
    assert "etag=" in row["source_version"] and restore_archive(cfg)["skipped"] == 1
