"""What a shard build reads and writes besides the shards: the listing of its sources (the
same as restore's, `storage.list_sources`) and what is done, the --src/--dst checks made before
anything is created, dst's recorded settings (build.json) and the finished videos' parts, the
per-video result rows and the manifest/failure tables. Used by `pipelines.data.shards`."""
from __future__ import annotations

import io
import json
import os
import re
from typing import TYPE_CHECKING

from pipelines.common import storage
from pipelines.common.cli import UsageError
from pipelines.common.video import VIDEO_EXTENSIONS

if TYPE_CHECKING:
    from pipelines.data.shards import ShardConfig


def list_videos(src: str, extensions=VIDEO_EXTENSIONS) -> list[str]:
    """Sorted video URLs under `src` (recursive; a symlink to a file counts as it), or `[src]`
    when it is one file."""
    return sorted(list_entries(src, extensions)[0])


def list_entries(src: str, extensions=VIDEO_EXTENSIONS) -> tuple[dict[str, str], dict[str, str]]:
    """({video URL: content identity} under `src`, sorted; {url: reason} of the entries with a
    video ending that are not readable files: dangling or looping symlinks, FIFOs, other
    special files); the same listing as restore's (`storage.list_sources`)."""
    fs, path = storage.filesystem(src)
    if fs.isfile(path):
        return {src: storage.source_version(src)}, {}
    if not fs.exists(path):
        raise UsageError(f"--src {src}: no such folder or prefix")
    ends = tuple(e.lower() for e in extensions)
    files, others = storage.list_sources(src)
    return {u: files[u][1] for u in sorted(files) if u.lower().endswith(ends)}, \
        {u: r for u, r in sorted(others.items()) if u.lower().endswith(ends)}


def _listing(url: str) -> dict[str, int]:
    """{path relative to url: size} of every file under url."""
    return {storage.relative_to(u, url): s for u, s in storage.list_files(url).items()}


def read_parts(dst: str) -> dict[str, dict]:
    """{video_key: manifest part} of every finished video under dst (read concurrently)."""
    names = [n for n in _listing(storage.join(dst, "parts")) if n.endswith(".json")]
    if not names:
        return {}
    fs, _ = storage.filesystem(dst)
    urls = [storage.join(dst, "parts", n) for n in names]
    paths = [storage.filesystem(u)[1] for u in urls]
    blobs = fs.cat(paths)
    return {n[:-5]: json.loads(blobs[p]) for n, p in zip(names, paths)}


def no_clips_reason(cfg: ShardConfig, shots: list) -> str:
    """Why a decoded video gave no clip (recorded in its part, the summary and its progress line)."""
    frames = shots[-1][1] if shots else 0
    longest = max((e - s for s, e in shots), default=0)
    return (f"0 clips: {frames} frames decoded in {len(shots)} shot(s), the longest {longest} frames; a clip needs "
            f"--clip-len {cfg.clip_len} frames inside one shot (and --edge-margin {cfg.edge_margin} from its cuts)")


def _result(item: dict, status: str, **values) -> dict:
    """One Ray Data output row per video; every column always present with one type."""
    row = {"url": item["url"], "relpath": item["relpath"], "video_key": item["video_key"], "status": status,
           "stage": "", "error": "", "error_kind": "", "frames": 0, "shots": 0, "clips": 0, "shards": 0, "bytes": 0,
           "shards_written": 0, "bytes_written": 0, "seconds": 0.0, "download_s": 0.0, "decode_s": 0.0,
           "shots_s": 0.0, "resize_s": 0.0, "encode_s": 0.0, "write_s": 0.0, "note": ""}
    row.update(values)
    return row


def plan_videos(dst: str, versions: dict[str, str], base: str, key_of, tmpdir: str) -> tuple[list[dict], int]:
    """(the task items, the count done before) for the videos {url: content identity}: done is
    a part of the source's version (a part from before versions were recorded is trusted) whose
    shards all exist at their recorded sizes; an item lists the shards of its key already there."""
    shards_now = {f"shards/{n}": s for n, s in _listing(storage.join(dst, "shards")).items()}
    parts = read_parts(dst)
    items, skipped = [], 0
    for url, version in versions.items():
        rel = storage.relative_to(url, base)
        key = key_of(rel)
        part = parts.get(key, {}).get("video", {})
        same = bool(part) and part.get("source_version", version) == version
        if same and all(shards_now.get(s["name"]) == s["bytes"] for s in part["shards"]):
            skipped += 1
            continue
        mine = re.compile(rf"shards/{re.escape(key)}-\d{{4}}\.tar$")
        existing = {n: s for n, s in shards_now.items() if mine.match(n)}
        items.append({"url": url, "relpath": rel, "video_key": key, "existing": json.dumps(existing),
                      "source_version": version, "trusted": same, "tmpdir": tmpdir})
    return items, skipped


def remove_orphan_shards(dst: str, parts: dict[str, dict]) -> list[str]:
    """Remove the shards of finished videos that their part does not name (an older version's,
    or one a killed run's worker wrote after the listing); returns them."""
    named = {s["name"] for p in parts.values() for s in p["video"]["shards"]}
    orphans = [n for n in (f"shards/{n}" for n in _listing(storage.join(dst, "shards")))
               if n not in named and n[len("shards/"):].rsplit("-", 1)[0] in parts]
    for name in orphans:
        storage.remove(storage.join(dst, name))
    return orphans


def _check_settings(cfg: ShardConfig) -> None:
    """dst's content settings must match this run's (else clips of two settings would mix)."""
    url = storage.join(cfg.dst, "build.json")
    want = cfg.content_settings()
    if storage.exists(url):
        have = json.loads(storage.read_text(url))
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        if diff:
            raise ValueError(f"--dst {cfg.dst} holds shards built with other settings ({', '.join(diff)}: "
                             f"{[have.get(k) for k in diff]} there, {[want.get(k) for k in diff]} now); "
                             f"use a new --dst or the same settings")
    else:
        storage.write_text(url, json.dumps(want, indent=1, sort_keys=True))


def _write_if_changed(url: str, data: bytes) -> bool:
    if storage.exists(url) and storage.read_bytes(url) == data:
        return False
    storage.write_bytes(url, data)
    return True


def _parquet(rows: list[dict], columns: list[str]) -> bytes:
    import pandas as pd

    table = pd.DataFrame(rows, columns=columns)
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    return buf.getvalue()


MANIFEST_COLUMNS = ["key", "shard", "index", "source", "relpath", "video_key", "shot", "shot_start", "shot_end",
                    "first_frame", "frames", "fps", "width", "height", "out_height", "out_width", "crop_y",
                    "crop_x", "bytes"]
# error_kind: "input" (the video itself: unreadable, too small, ...) or "internal" (the setup: dst, S3, a bug)
FAILURE_COLUMNS = ["file", "relpath", "stage", "error", "error_kind"]


def _normalise(url: str) -> str:
    return str(url).rstrip("/") if storage.is_remote(url) else os.path.abspath(url)


def check_paths(cfg: ShardConfig) -> None:
    """--src exists and --dst is neither it nor inside it; `UsageError` before anything is created."""
    if not cfg.src:
        raise UsageError("--src is required: a folder or s3:// prefix of videos")
    if not cfg.dst:
        raise UsageError("--dst is required")
    storage.check_access(cfg.src, "--src")
    storage.check_access(cfg.dst, "--dst")
    fs, path = storage.filesystem(cfg.src)
    if not storage.is_remote(cfg.src) and os.path.islink(path) and not os.path.exists(path):
        raise UsageError(f"--src {cfg.src}: {storage._special_reason(path)}")
    if not fs.exists(path):
        raise UsageError(f"--src {cfg.src}: no such file, folder or prefix")
    src, dst = _normalise(cfg.src), _normalise(cfg.dst)
    if dst == src or dst.startswith(src + "/"):
        raise UsageError(f"--dst {cfg.dst}: must not be --src {cfg.src} or inside it (its shards would be inputs)")


def print_summary(summary: dict) -> None:
    """The build's last line before its JSON summary."""
    print(f"[build_shards] done: {summary['videos']} videos ({summary['videos_processed']} processed, "
          f"{summary['videos_skipped']} skipped, {summary['videos_failed']} failed), {summary['shots']} shots, "
          f"{summary['clips']} clips, {summary['shards']} shards ({summary['shards_written']} written), "
          f"{summary['bytes'] / 1e6:.1f} MB ({summary['bytes_written'] / 1e6:.1f} MB written), "
          f"{summary['failures']} failures, {summary['videos_without_clips']} videos with 0 clips (see "
          f"'no_clips'), {summary['clips_per_s']:.1f} clips/s in {summary['seconds']:.1f} s", flush=True)
