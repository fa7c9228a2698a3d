"""Raw videos (a folder or an s3:// prefix) -> WebDataset tar shards of clips, with Ray Data.

Read top to bottom:
  1. `ShardConfig`      - every option; a CLI flag of `jobs/build_shards.py`.
  2. keys and records   - deterministic video and clip keys, the per-clip JSON record.
  3. `process_video`    - one video in one task: probe -> one streaming decode that detects
                          shots and cuts clips -> resize/crop -> encode -> atomic tar shards ->
                          the video's manifest part (written last: it marks the video done).
  4. `build_shards`     - the driver: list, skip what is done, run the rest on Ray Data,
                          rebuild `manifest.parquet` from the parts, write `failures.parquet`.

Layout under `dst`:
    build.json                    the settings that shape the content (a re-run must match)
    shards/<video_key>-0000.tar   one or more shards per source video, named from its key
    parts/<video_key>.json        per-video manifest part: shots, shards (bytes), clip rows
    manifest.parquet              one row per clip (key, shard, index in shard, source, ...)
    failures.parquet              one row per video that failed (file, stage, error)

Idempotence: a video's key is a hash of its path relative to `src`; a clip's key is
`<video_key>-s<shot>-f<first frame>`; a video's clips fill its own shards in order, and the
tar bytes are deterministic (fixed member metadata). A new video adds new shards and never
touches old ones; a re-run skips every video whose part exists, records its source's
version (size + mtime, or S3 ETag) and has all its shards at their recorded sizes; any other
is redone from scratch, skipping the upload of a shard already present at the same size if
its part names the same source version or its bytes read back are the same. The manifest is
rebuilt from the parts, so it lists exactly the clips in the tars the parts name.

`pipelines.data.shard_io` holds the rest of the build's I/O: the source listing, the
--src/--dst checks, build.json and the parts, the manifest/failure tables.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import time

import cv2
import numpy as np

from models.timing import SectionTimer
from pipelines.common import storage, video
from pipelines.common.cli import require
from pipelines.common.video import VIDEO_EXTENSIONS
from pipelines.data.shard_io import (
    FAILURE_COLUMNS,
    MANIFEST_COLUMNS,
    _check_settings,
    _parquet,
    _result,
    _write_if_changed,
    check_paths,
    list_entries,
    no_clips_reason,
    plan_videos,
    print_summary,
    read_parts,
    remove_orphan_shards,
)
from pipelines.data.shots import DEFAULT_MIN_SHOT_LEN, DEFAULT_THRESHOLD, ShotDetector
from pipelines.data.tar_shards import TarShard

SECTIONS = ("decode", "shots", "resize", "encode", "write")   # the per-video timings of a row (seconds)

FORMAT_VERSION = 1

# Frame encoding, measured on 256x256 crops of bikes.mp4 (cv2, one core, per frame; the
# machine was shared, so times are +-50%):
#   PNG level 3:       53 KiB, encode 7-9 ms,  decode 1.8-2.4 ms, lossless
#   JPEG q95 4:2:0:    13 KiB, encode 0.2-0.5, decode 0.4-0.8, 47.3 dB (36.8 dB on saturated colour texture)
#   JPEG q95 4:4:4:    16 KiB, encode 0.2-0.4, decode 0.4-0.9, 48.6 dB (43.2 dB on that texture)
#   WebP q95:           7 KiB, encode 6.8 ms, decode 1.0 ms, 46.0 dB;  WebP lossless: 32 KiB, 117 ms
# Default: JPEG q95 with full-resolution chroma (4:4:4): 3.3x smaller than PNG and 2-3x
# faster to decode every epoch; its error sits far below the source's own H.264 loss and the
# degradations applied in training (their LQ is near 25 dB), and 4:4:4 keeps the colour
# detail an upscaler must learn (4:2:0 loses 6 dB of it). `--frame-format png` is lossless.
FRAME_FORMATS = {"jpg": (".jpg", cv2.IMWRITE_JPEG_QUALITY), "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY),
                 "png": (".png", None)}


@dataclasses.dataclass(frozen=True)
class ShardConfig:
    """Build WebDataset clip shards from raw videos."""
    src: str = ""                     # folder or s3:// prefix of raw videos (or one video file)
    dst: str = "runs/demo/shards"     # output folder or s3:// prefix
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS  # file endings taken as videos (case-insensitive)
    clip_len: int = 16                # frames per clip (a training sample)
    stride: int = 16                  # frames between clip starts in a shot; < clip_len overlaps
    size: int = 256                   # square crop side (px) of the stored frames; 0 = no crop
    short_side: int = -1              # resize the short side to this (px) first; -1: = size; 0: no resize
    crop: str = "center"              # center | random (position drawn from the clip key: reproducible)
    frame_format: str = "jpg"         # jpg | png | webp (see the measured trade-off above)
    quality: int = 95                 # JPEG/WebP quality (1..100); PNG ignores it
    shard_mb: float = 256.0           # target shard size in MB (a shard closes past it)
    threshold: float = DEFAULT_THRESHOLD      # shot detector score threshold (PySceneDetect units)
    min_shot_len: int = DEFAULT_MIN_SHOT_LEN  # frames: no two cuts closer than this
    edge_margin: int = 1              # frames kept clear of each cut on both sides (detection slack)
    max_videos: int = -1              # process at most this many unfinished videos this run; -1: all
    use_ray: bool = True              # Ray Data tasks; False: one local process (small jobs, benchmarks)
    concurrency: int = -1             # videos processed at once; -1: the cluster's CPU count
    fail_after_shards: int = -1       # fault injection (tests): a task dies after its N-th shard
    progress: bool = True             # a line per finished video

    def __post_init__(self):
        if self.clip_len < 1 or self.stride < 1:
            raise ValueError(f"--clip-len and --stride must be >= 1, got {self.clip_len}, {self.stride}")
        if self.frame_format not in FRAME_FORMATS:
            raise ValueError(f"--frame-format must be one of {sorted(FRAME_FORMATS)}, got {self.frame_format!r}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"--crop must be center or random, got {self.crop!r}")
        require(self.size >= 0, "--size", ">= 0", self.size)
        require(self.short_side >= -1, "--short-side", ">= 0 px, or -1 (= --size)", self.short_side)
        require(self.shard_mb > 0, "--shard-mb", "> 0", self.shard_mb)
        require(self.edge_margin >= 0, "--edge-margin", ">= 0", self.edge_margin)
        require(1 <= self.quality <= 100, "--quality", "in 1..100", self.quality)
        require(self.threshold >= 0, "--threshold", ">= 0", self.threshold)
        require(self.min_shot_len >= 0, "--min-shot-len", ">= 0 frames", self.min_shot_len)
        require(self.max_videos >= -1, "--max-videos", ">= 0, or -1 (all)", self.max_videos)
        require(self.concurrency == -1 or self.concurrency >= 1, "--concurrency", ">= 1, or -1 (the cluster's CPUs)",
                self.concurrency)

    def resize_to(self) -> int:
        return self.size if self.short_side < 0 else self.short_side

    def content_settings(self) -> dict:
        """What shapes the shards' content: a re-run into the same dst must not change it."""
        keys = ("clip_len", "stride", "size", "short_side", "crop", "frame_format", "quality", "shard_mb",
                "threshold", "min_shot_len", "edge_margin")
        return {"format_version": FORMAT_VERSION, **{k: getattr(self, k) for k in keys}}


class InjectedFault(RuntimeError):
    """Raised by `--fail-after-shards` to simulate a crash; never recorded as a failure."""


# ---------------------------------------------------------------- 2. keys and records
def video_key(relpath: str) -> str:
    """Readable, unique, dot-free key of a source video: `<stem>-<sha1(relpath)[:12]>`."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", os.path.splitext(os.path.basename(relpath))[0])[:40].strip("_")
    return f"{stem or 'video'}-{hashlib.sha1(relpath.encode()).hexdigest()[:12]}"


def clip_key(vkey: str, shot: int, first: int) -> str:
    return f"{vkey}-s{shot:04d}-f{first:07d}"


def shard_name(vkey: str, part: int) -> str:
    return f"shards/{vkey}-{part:04d}.tar"


def _crop_box(cfg: ShardConfig, h: int, w: int, key: str) -> tuple[int, int, int, int]:
    """(y, x, height, width) of the crop in the resized frame; random crops come from the key."""
    if cfg.size == 0:
        return 0, 0, h, w
    if cfg.crop == "center":
        return (h - cfg.size) // 2, (w - cfg.size) // 2, cfg.size, cfg.size
    rng = np.random.default_rng(int(hashlib.sha1(key.encode()).hexdigest()[:12], 16))
    return int(rng.integers(0, h - cfg.size + 1)), int(rng.integers(0, w - cfg.size + 1)), cfg.size, cfg.size


def encode_frame(frame: np.ndarray, cfg: ShardConfig) -> bytes:
    ext, flag = FRAME_FORMATS[cfg.frame_format]
    params = [flag, cfg.quality] if flag is not None else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    if ext == ".jpg":
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {frame.shape} frame as {ext}")
    return buf.tobytes()


# ---------------------------------------------------------------- 3. one video
class _VideoRun:
    """State of one video's single decode pass (see `process_video`)."""

    def __init__(self, cfg: ShardConfig, item: dict, info: video.VideoInfo, existing: dict[str, int]):
        self.cfg, self.item, self.info, self.existing = cfg, item, info, existing
        self.vkey = item["video_key"]
        self.rows: list[dict] = []
        self.shards: list[dict] = []
        self.written: list[str] = []
        self.tar = TarShard()
        self.timer = SectionTimer()               # seconds per section: decode, shots, resize, encode, write
        self.resized = (info.width, info.height)   # (w, h) after the short-side resize
        self.bytes_written = 0

    def add_clip(self, shot: int, shot_start: int, first: int, frames: list[np.ndarray]) -> None:
        """Crop + resize + encode one clip of decoded frames; the shard closes when full."""
        cfg, info = self.cfg, self.info
        key = clip_key(self.vkey, shot, first)
        rh, rw = self.resized[1], self.resized[0]
        y, x, ch, cw = _crop_box(cfg, rh, rw, key)        # in resized-frame pixels
        with self.timer.section("resize"):
            # Crop in source pixels first, then resize only the crop: 2.4x fewer pixels through
            # INTER_AREA than resizing whole 640x272 frames (it was a third of the task time).
            s = info.width / rw
            sy, sx = round(y * s), round(x * s)
            sh, sw = min(round(ch * s), frames[0].shape[0] - sy), min(round(cw * s), frames[0].shape[1] - sx)
            crops = [f[sy:sy + sh, sx:sx + sw] for f in frames]
            if (sh, sw) != (ch, cw):
                crops = [cv2.resize(c, (cw, ch), interpolation=cv2.INTER_AREA) for c in crops]
        ext = FRAME_FORMATS[cfg.frame_format][0]
        with self.timer.section("encode"):
            encoded = [encode_frame(np.ascontiguousarray(c), cfg) for c in crops]
        record = {"key": key, "source": self.item["url"], "relpath": self.item["relpath"], "video_key": self.vkey,
                  "shot": shot, "shot_start": shot_start, "first_frame": first, "frames": len(frames),
                  "fps": info.fps, "fps_fraction": info.fps_fraction, "width": info.width, "height": info.height,
                  "resized": [rh, rw], "crop": [y, x, ch, cw], "format": ext[1:]}
        index = self.tar.clips
        self.tar.add(f"{key}.json", json.dumps(record, sort_keys=True).encode())
        for t, data in enumerate(encoded):
            self.tar.add(f"{key}.{t:03d}{ext}", data)
        self.tar.clips += 1
        self.rows.append({**{k: record[k] for k in ("key", "source", "relpath", "video_key", "shot", "shot_start",
                                                      "first_frame", "frames", "fps", "width", "height")},
                          "shard": shard_name(self.vkey, len(self.shards)), "index": index,
                          "out_height": ch, "out_width": cw, "crop_y": y, "crop_x": x,
                          "bytes": sum(map(len, encoded))})
        if self.tar.size() >= self.cfg.shard_mb * 1e6:
            self.flush()

    def flush(self) -> None:
        if self.tar.clips == 0:
            return
        with self.timer.section("write"):
            name, clips, data = shard_name(self.vkey, len(self.shards)), self.tar.clips, self.tar.close()
            self.tar = TarShard()
            if not self._kept(name, data):
                storage.write_bytes(storage.join(self.cfg.dst, name), data)
                self.written.append(name)
                self.bytes_written += len(data)
            self.shards.append({"name": name, "bytes": len(data), "clips": clips})
        if 0 <= self.cfg.fail_after_shards <= len(self.shards):
            raise InjectedFault(f"fault injection: stopping after shard {name}")

    def _kept(self, name: str, data: bytes) -> bool:
        """Whether an earlier try left shard `name` holding `data`: same size, and made from this
        source version (its part says so) or else read back and byte-identical. A tar's size is a
        multiple of 10 KiB: a changed source often gives a shard of the same name and size, and
        trusting the size alone kept stale shards beside new ones (#17 item 6)."""
        if self.existing.get(name) != len(data):
            return False
        return bool(self.item.get("trusted")) or storage.read_bytes(storage.join(self.cfg.dst, name)) == data

    def run(self, path: str) -> list[tuple[int, int]]:
        """Decode once: detect shots, cut clips [a, a + L) at a stride, never across a cut and
        at least `edge_margin` frames away from one; return the shots."""
        cfg, info = self.cfg, self.info
        L, margin = cfg.clip_len, cfg.edge_margin
        detector = ShotDetector(threshold=cfg.threshold, min_shot_len=cfg.min_shot_len)
        target = cfg.resize_to()
        scale = min(1.0, target / min(info.width, info.height)) if target else 1.0   # never upscale
        self.resized = (round(info.width * scale), round(info.height * scale))       # (w, h)
        if cfg.size and min(self.resized) < cfg.size:
            raise _StageError("size", video.VideoError(self.item["url"], f"{info.width}x{info.height} is too small "
                                                       f"for --size {cfg.size} (no upscaling of HQ data)"))
        shot, shot_start, next_start, buffer = 0, 0, 0, {}
        frames = video.iter_frames(path, expected=info.frames)
        index = -1
        while True:
            with self.timer.section("decode"):
                try:
                    frame = next(frames, None)
                except video.VideoError as exc:
                    raise _StageError("decode", exc) from exc
            if frame is None:
                break
            index += 1
            with self.timer.section("shots"):
                cut = detector.push(frame)
            if cut:
                shot, shot_start, next_start, buffer = shot + 1, index, index + margin, {}
            if index >= next_start:
                buffer[index] = frame
            while index >= next_start + L - 1 + margin:       # `margin` frames past the clip, no cut
                self.add_clip(shot, shot_start, next_start, [buffer[i] for i in range(next_start, next_start + L)])
                next_start += cfg.stride
                buffer = {i: f for i, f in buffer.items() if i >= next_start}
        while next_start + L <= index + 1:                     # the video's end is not a cut
            self.add_clip(shot, shot_start, next_start, [buffer[i] for i in range(next_start, next_start + L)])
            next_start += cfg.stride
        self.flush()
        shots = detector.shots()
        ends = {s: e for s, e in shots}
        for row in self.rows:
            row["shot_end"] = ends[row["shot_start"]]
        return shots


class _StageError(Exception):
    def __init__(self, stage: str, error: Exception):
        super().__init__(str(error))
        self.stage, self.error = stage, error


def process_video(item: dict, cfg: ShardConfig) -> dict:
    """Shards + manifest part for one video, temp files in the run's folder (`item["tmpdir"]`);
    never raises for a bad video (the row says why)."""
    with storage.task_tempdir(item.get("tmpdir", "")):
        return _process_video(item, cfg)


def _process_video(item: dict, cfg: ShardConfig) -> dict:
    start = time.perf_counter()
    existing = json.loads(item.get("existing") or "{}")
    run, stage, path = None, "download", None
    try:
        with storage.local_copy(item["url"]) as path:
            download_s = time.perf_counter() - start
            stage = "probe"
            info = video.probe(path)
            stage = "clips"
            run = _VideoRun(cfg, item, info, existing)
            shots = run.run(path)
        stage = "write"
        note = "" if run.rows else no_clips_reason(cfg, shots)
        part = {"version": FORMAT_VERSION, "video": {
            "url": item["url"], "relpath": item["relpath"], "video_key": run.vkey, "frames": info.frames,
            "source_version": item["source_version"],
            "fps": info.fps, "width": info.width, "height": info.height, "shots": [list(s) for s in shots],
            "shards": run.shards, "note": note}, "clips": run.rows}
        storage.write_text(storage.join(cfg.dst, "parts", f"{run.vkey}.json"), json.dumps(part))
        for name in set(existing) - {s["name"] for s in run.shards}:   # left by an older, longer version
            storage.remove(storage.join(cfg.dst, name))
        return _result(item, "done", frames=info.frames, shots=len(shots), clips=len(run.rows),
                       shards=len(run.shards), bytes=sum(s["bytes"] for s in run.shards),
                       shards_written=len(run.written), bytes_written=run.bytes_written, note=note,
                       seconds=time.perf_counter() - start, download_s=download_s,
                       **{f"{k}_s": run.timer.seconds.get(k, 0.0) for k in SECTIONS})
    except InjectedFault:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the job
        if isinstance(exc, _StageError):
            stage, exc = exc.stage, exc.error
        # The video is not done: its part goes (it may name shards now gone) and so do its
        # shards, which no manifest would list.
        leftovers = [storage.join(cfg.dst, "parts", f"{item['video_key']}.json")]
        leftovers += [storage.join(cfg.dst, name) for name in set(existing) | set(run.written if run else [])]
        for url in leftovers:
            with contextlib.suppress(OSError):   # a dst that refuses writes may refuse this too: the row says why
                storage.remove(url)
        # VideoError names the local copy; the row names the source, so keep the reason, and
        # name the source where FFmpeg quotes the temporary file (the row must not vary by run).
        error = exc.reason if isinstance(exc, video.VideoError) else f"{exc.__class__.__name__}: {exc}"
        error = error.replace(path, item["url"]) if path else error
        kind = "input" if isinstance(exc, video.VideoError) else "internal"
        return _result(item, "failed", stage=stage, error=error[:2000], error_kind=kind,
                       seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- 4. the driver
def _run(items: list[dict], cfg: ShardConfig, on_row) -> None:
    """process_video over items: Ray Data tasks (one video per task) or a local loop."""
    import functools

    if not items:
        return
    if not cfg.use_ray:
        for item in items:
            on_row(process_video(item, cfg))
        return
    import ray

    if not ray.is_initialized():
        ray.init()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    concurrency = min(len(items), cfg.concurrency if cfg.concurrency > 0 else cpus)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    # Bad videos never raise (they become failure rows); what does raise (a crash, the fault
    # injection) stops the job: Ray Data retries tasks on system errors only, not exceptions.
    ds = ds.map(functools.partial(process_video, cfg=cfg), num_cpus=1,
                compute=ray.data.TaskPoolStrategy(size=concurrency))
    for row in ds.iter_rows():
        on_row(dict(row))


def build_shards(cfg: ShardConfig) -> dict:
    """Build (or complete) the shards of every video under cfg.src; returns the summary. Temp
    files live in a run folder removed at the end; a killed run's (and its dst `.part` files) go first."""
    check_paths(cfg)
    storage.makedirs(cfg.dst)
    _check_settings(cfg)
    with storage.run_tempdir() as tmpdir:
        storage.remove_stale_parts(cfg.dst)
        try:
            return _build(cfg, tmpdir)
        finally:                          # after our tasks: what a killed run's worker wrote late
            storage.remove_stale_parts(cfg.dst)


def _build(cfg: ShardConfig, tmpdir: str) -> dict:
    start = time.perf_counter()

    # 1. What is there, what is done (see `plan_videos`).
    versions, unreadable = list_entries(cfg.src, cfg.extensions)
    urls = list(versions)
    one_file = urls == [cfg.src] or (not urls and list(unreadable) == [storage.filesystem(cfg.src)[1]])
    base = os.path.dirname(cfg.src) if one_file else cfg.src
    items, skipped = plan_videos(cfg.dst, versions, base, video_key, tmpdir)
    if cfg.max_videos >= 0:
        items = items[:cfg.max_videos]
    print(f"[build_shards] {len(urls)} videos under {cfg.src}: {skipped} done before, {len(items)} to process, "
          f"{len(urls) - skipped - len(items)} left for a later run, {len(unreadable)} not readable files "
          f"-> {cfg.dst}", flush=True)
    for url, reason in unreadable.items():
        print(f"[build_shards] {storage.relative_to(url, base)}: FAILED at list: {reason}", flush=True)

    # 2. Process (Ray Data), a line per finished video.
    results: list[dict] = [_result({"url": u, "relpath": storage.relative_to(u, base),
                                    "video_key": video_key(storage.relative_to(u, base))},
                                   "failed", stage="list", error=reason, error_kind="input")
                            for u, reason in unreadable.items()]

    def on_row(row: dict) -> None:
        results.append(row)
        if cfg.progress:
            what = (row["note"] if row["status"] == "done" and row["note"] else
                    f"{row['clips']} clips, {row['shots']} shots, {row['shards_written']}/{row['shards']} shards "
                    f"written ({row['bytes_written'] / 1e6:.1f} MB)" if row["status"] == "done"
                    else f"FAILED at {row['stage']}: {row['error'][:200]}")
            print(f"[build_shards] {len(results) - len(unreadable)}/{len(items)} {row['relpath']}: {what} in {row['seconds']:.1f} s",
                  flush=True)

    _run(items, cfg, on_row)

    # 3. The manifest from the parts (what the tars hold), the failures of this run.
    parts = read_parts(cfg.dst)
    if items:
        remove_orphan_shards(cfg.dst, parts)
    rows = sorted((r for p in parts.values() for r in p["clips"]), key=lambda r: (r["shard"], r["index"]))
    manifest_changed = _write_if_changed(storage.join(cfg.dst, "manifest.parquet"), _parquet(rows, MANIFEST_COLUMNS))
    failed = [r for r in results if r["status"] == "failed"]
    failures = [{"file": r["url"], "relpath": r["relpath"], "stage": r["stage"], "error": r["error"],
                 "error_kind": r["error_kind"]} for r in sorted(failed, key=lambda r: r["url"])]
    not_input = [f for f in failures if f["error_kind"] != "input"]
    _write_if_changed(storage.join(cfg.dst, "failures.parquet"), _parquet(failures, FAILURE_COLUMNS))

    # 4. Summary: totals over the manifest, and what this run did.
    no_clips = sorted(({"relpath": p["video"]["relpath"],
                        "reason": p["video"].get("note") or no_clips_reason(cfg, p["video"]["shots"])}
                       for p in parts.values() if not p["clips"]), key=lambda r: r["relpath"])
    seconds = time.perf_counter() - start
    new = [r for r in results if r["status"] == "done"]
    clips_made = sum(r["clips"] for r in new)
    summary = {
        "videos": len(urls) + len(unreadable), "videos_processed": len(new), "videos_skipped": skipped,
        "videos_deferred": len(urls) - skipped - len(items),
        "videos_failed": len(failed), "shots": sum(len(p["video"]["shots"]) for p in parts.values()),
        "clips": len(rows), "shards": sum(len(p["video"]["shards"]) for p in parts.values()),
        "bytes": sum(s["bytes"] for p in parts.values() for s in p["video"]["shards"]),
        "clips_written": clips_made, "shards_written": sum(r["shards_written"] for r in new),
        "bytes_written": sum(r["bytes_written"] for r in new), "manifest_written": manifest_changed,
        "failures": len(failures),
        # failed for a reason that is not the video's (dst, S3, a bug): the job exits 1 if nothing was done
        "failed_not_input": len(not_input), "first_not_input_error": not_input[0]["error"][:300] if not_input else "",
        # videos done without a clip (shorter than --clip-len, or only short shots), over every run
        "videos_without_clips": len(no_clips), "no_clips": no_clips, "seconds": seconds, "clips_per_s": clips_made / seconds,
        "mb_per_s": sum(r["bytes"] for r in new) / 1e6 / seconds,
        **{f"{k}_s": sum(r[f"{k}_s"] for r in results) for k in ("download", *SECTIONS)},
        "dst": cfg.dst,
    }
    print_summary(summary)
    return summary
