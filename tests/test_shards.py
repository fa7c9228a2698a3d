"""build_shards end to end on a real S3 server with Ray Data: cuts, manifest = tars, failures,
idempotence, new videos, and resuming after a crash."""
from __future__ import annotations

import io
import json
import tarfile

import cv2
import numpy as np
import pandas as pd
import pytest

from pipelines.common import storage, video
from pipelines.common.samples import sample_video
from pipelines.data.shards import ShardConfig, build_shards, video_key
from tests.media import corrupt_file, shots_video

SYNTH_CUTS = [17, 40]     # synthetic video: 60 frames, 64x80
BIKES_CUTS = [30, 76]     # the real cuts of bikes.mp4 inside its first 100 frames
TRUE_CUTS = {"real/bikes100.mp4": BIKES_CUTS, "synthetic/cuts.mp4": SYNTH_CUTS}


def make_sources(folder) -> dict[str, str]:
    """{relative path: local file}: a real video with cuts, a synthetic one, a corrupt one."""
    (folder / "real").mkdir(parents=True)
    (folder / "synthetic").mkdir()
    bikes = str(folder / "real" / "bikes100.mp4")
    frames = (cv2.resize(f, (320, 136), interpolation=cv2.INTER_AREA)
              for f in video.iter_frames(sample_video("bikes"), count=100))
    video.write_video(bikes, frames, fps=25, crf=18, preset="veryfast")
    synth = str(folder / "synthetic" / "cuts.mp4")
    shots_video(synth, cuts=SYNTH_CUTS, n=60, height=64, width=80)
    bad = corrupt_file(str(folder / "bad.mp4"), "garbage")
    (folder / "notes.txt").write_text("not a video")
    return {"real/bikes100.mp4": bikes, "synthetic/cuts.mp4": synth, "bad.mp4": bad, "notes.txt": str(folder / "notes.txt")}


def config(src: str, dst: str, **kw) -> ShardConfig:
    # 0.1 MB shards: several shards per video, to exercise shard boundaries and resuming.
    return ShardConfig(src=src, dst=dst, clip_len=8, stride=8, size=64, shard_mb=0.1, progress=False, **kw)


def versions(root: str) -> dict[str, tuple]:
    """{path: (size, ETag, modified)} of every object under root."""
    fs, path = storage.filesystem(root)
    return {p[len(path) + 1:]: (i.get("size"), i.get("ETag"), str(i.get("LastModified")))
            for p, i in fs.find(path, detail=True).items()}


def tar_contents(dst: str) -> dict[str, dict]:
    """{clip key: {shard, index, names, record}} read from every tar under dst/shards."""
    out = {}
    for url in storage.glob(storage.join(dst, "shards", "*.tar")):
        shard = storage.relative_to(url, dst)
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                entry = out.setdefault(key, {"shard": shard, "index": len({k for k, v in out.items()
                                                                            if v["shard"] == shard}),
                                             "names": [], "record": None, "frames": {}})
                data = tar.extractfile(member).read()
                entry["names"].append(suffix)
                if suffix == "json":
                    entry["record"] = json.loads(data)
                else:
                    entry["frames"][int(suffix.split(".")[0])] = data
    return out


def read_parquet(url: str) -> pd.DataFrame:
    with storage.open(url, "rb") as f:
        return pd.read_parquet(f)


@pytest.fixture(scope="module")
def built(s3_server, ray_local, tmp_path_factory):
    """Sources uploaded to S3 and one full build; snapshots taken right after it."""
    bucket = s3_server.make_bucket("shards-e2e")
    local = make_sources(tmp_path_factory.mktemp("sources"))
    src, dst = f"{bucket}/raw", f"{bucket}/shards"
    for rel, path in local.items():
        storage.upload_file(path, storage.join(src, rel))
    summary = build_shards(config(src, dst))
    return {"bucket": bucket, "local": local, "src": src, "dst": dst, "summary": summary,
            "manifest": read_parquet(storage.join(dst, "manifest.parquet")),
            "shards": {k: v[0] for k, v in versions(dst).items() if k.startswith("shards/")}}


def test_build_on_s3_cuts_manifest_matches_tars_and_failure_recorded(built):
    dst, manifest, summary = built["dst"], built["manifest"], built["summary"]
    assert summary["videos"] == 3 and summary["videos_processed"] == 2 and summary["failures"] == 1
    assert summary["clips"] == len(manifest) > 10 and summary["shards"] == len(built["shards"]) >= 4

    # 1. The manifest is exactly the tars' content: same keys, shards, order; 8 frames + a record each.
    tars = tar_contents(dst)
    assert set(tars) == set(manifest["key"])
    for row in manifest.itertuples():
        entry = tars[row.key]
        assert (entry["shard"], entry["index"]) == (row.shard, row.index)
        assert sorted(entry["names"]) == sorted(["json"] + [f"{t:03d}.jpg" for t in range(8)])
        rec = entry["record"]
        assert (rec["source"], rec["shot"], rec["first_frame"], rec["frames"]) == (row.source, row.shot,
                                                                                   row.first_frame, 8)
        assert rec["fps"] == 25.0 and (rec["width"], rec["height"]) == ((320, 136) if "bikes" in row.key else (80, 64))

    # 2. Detected cuts within one frame of the true ones; no clip spans a true cut.
    parts = {rel: json.loads(storage.read_text(storage.join(dst, "parts", f"{video_key(rel)}.json")))
             for rel in TRUE_CUTS}
    for rel, cuts in TRUE_CUTS.items():
        found = [s for s, _ in parts[rel]["video"]["shots"][1:]]
        assert len(found) == len(cuts) and all(abs(f - c) <= 1 for f, c in zip(found, cuts)), (rel, found)
        rows = manifest[manifest["relpath"] == rel]
        assert len(rows) >= 3 and set(rows["shot"]) == {0, 1, 2}
        for first in rows["first_frame"]:
            assert not any(first < c <= first + 7 for c in cuts), (rel, first)

    # 3. Frames are the source's frames at the recorded index (64x80: no resize, crop x = 8).
    row = manifest[(manifest["relpath"] == "synthetic/cuts.mp4") & (manifest["shot"] == 1)].iloc[0]
    source = video.read_frames(built["local"]["synthetic/cuts.mp4"])[:, :, 8:72]
    stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(tars[row.key]["frames"][3], np.uint8), 1), cv2.COLOR_BGR2RGB)
    errors = {d: np.abs(stored.astype(int) - source[row.first_frame + 3 + d]).mean() for d in (-1, 0, 1)}
    assert errors[0] < 4 and errors[0] < 0.5 * min(errors[-1], errors[1]), errors

    # 4. One failure row, naming the corrupt file.
    failures = read_parquet(storage.join(dst, "failures.parquet"))
    assert len(failures) == 1 and failures.iloc[0]["file"] == storage.join(built["src"], "bad.mp4")
    assert failures.iloc[0]["stage"] == "probe" and "readable" in failures.iloc[0]["error"]


@pytest.mark.slow
def test_rerun_writes_nothing_and_new_videos_only_add_shards(built, tmp_path):
    dst = built["dst"]
    before = versions(dst)
    again = build_shards(config(built["src"], dst))             # nothing to do: Ray is not even used
    assert (again["videos_processed"], again["shards_written"], again["manifest_written"]) == (0, 0, False)
    assert again["clips"] == built["summary"]["clips"] and again["failures"] == 1
    assert versions(dst) == before                     # not one object rewritten

    # The same videos under another prefix plus a new one: only the new one is processed.
    src2 = f"{built['bucket']}/raw2"
    for rel, path in built["local"].items():
        storage.upload_file(path, storage.join(src2, rel))
    new = str(tmp_path / "new.mp4")
    shots_video(new, cuts=[10], n=30, height=64, width=64)
    storage.upload_file(new, storage.join(src2, "more/new.mp4"))
    grown = build_shards(config(src2, dst, use_ray=False))      # same code path, one process: faster
    assert grown["videos_processed"] == 1 and grown["videos_skipped"] == 2 and grown["shards_written"] >= 1
    after = versions(dst)
    assert all(after[k] == v for k, v in before.items() if k.startswith(("shards/", "parts/")))
    assert all(k.startswith(f"shards/{video_key('more/new.mp4')}") for k in set(after) - set(before)
               if k.startswith("shards/"))
    manifest = read_parquet(storage.join(dst, "manifest.parquet"))
    assert set(manifest["key"]) == set(built["manifest"]["key"]) | set(tar_contents(dst)) and \
        len(manifest) == len(tar_contents(dst)) > len(built["manifest"])


@pytest.mark.slow
def test_crash_then_resume_gives_the_same_clips(built, s3_bucket):
    src, dst = built["src"], f"{s3_bucket}/shards"
    with pytest.raises(Exception, match="fault injection"):
        build_shards(config(src, dst, fail_after_shards=1))
    crashed = versions(dst)
    assert "manifest.parquet" not in crashed and any(k.startswith("shards/") for k in crashed)
    # (the other video's task may still finish a shard after the driver gave up: Ray Data
    # cancels its tasks but does not wait for them, so only "at most" can be asserted here)
    resumed = build_shards(config(src, dst, use_ray=False))
    after = versions(dst)
    assert all(after[k] == v for k, v in crashed.items() if k.startswith("shards/"))   # not re-uploaded
    assert 1 <= resumed["shards_written"] <= len(built["shards"]) - sum(k.startswith("shards/") for k in crashed)
    assert {k: v[0] for k, v in after.items() if k.startswith("shards/")} == built["shards"]   # same bytes
    pd.testing.assert_frame_equal(read_parquet(storage.join(dst, "manifest.parquet")), built["manifest"])

    # Lost objects (a shard of one video, the part of another): only those are redone.
    shard = sorted(k for k in after if k.startswith(f"shards/{video_key('real/bikes100.mp4')}"))[1]
    storage.remove(storage.join(dst, shard))
    storage.remove(storage.join(dst, "parts", f"{video_key('synthetic/cuts.mp4')}.json"))
    again = build_shards(config(src, dst, use_ray=False))
    assert again["videos_processed"] == 2 and again["shards_written"] == 1
    pd.testing.assert_frame_equal(read_parquet(storage.join(dst, "manifest.parquet")), built["manifest"])
    assert set(tar_contents(dst)) == set(built["manifest"]["key"])


def test_other_settings_into_the_same_dst_are_refused(built):
    with pytest.raises(ValueError, match="clip_len"):
        build_shards(ShardConfig(src=built["src"], dst=built["dst"], clip_len=4, stride=8, size=64, shard_mb=0.1))
