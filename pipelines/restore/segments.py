"""Shot-parallel restoration of long videos: plan, segments, join.

With `--frames-per-task N` a video longer than N frames is restored as several tasks:

1. Plan (`plan_video`, one task per video): probe it and run the streaming shot detector
   over every frame (the same detector, over the same frames, as a whole-video restoration
   runs), then group consecutive shots into segments of about N frames, never cutting a
   shot (a shot longer than N is a segment of its own). The plan is saved as
   `<dst>/.d2vr-segments/<relpath>/plan.json` with the input's version and the settings
   that shape the output (`settings`).
2. Segments (`segment_items`): one item per segment not finished by an earlier run, restored
   by `stream.restore_items` like a whole video, on any actor: frames [start, start + count)
   with the planned shot starts (the recurrent state resets there, frame t of a shot draws
   noise seed + t), encoded alike, written atomically with a `.done` marker. Since every
   segment starts at a cut, the restored frames equal the whole video restored at once.
3. Join (`join`): when all segments are in, their packets are concatenated without
   re-encoding (`video.concat_videos`; each segment starts with a key frame), the audio is
   muxed once from the input, the output appears atomically with its marker, and the
   segment folder is removed.

Resume: a re-run reads the plan (no detector pass) and restores only the segments without a
complete marker; a changed input, changed settings or `--force` discard the folder and plan again.
"""
from __future__ import annotations

import dataclasses
import json
import os

from pipelines.common import storage, video
from pipelines.restore.config import RestoreConfig
from pipelines.restore.stream import DONE_SUFFIX, empty_row, make_detector, now_utc

SEGMENTS_DIR = ".d2vr-segments"
PLAN_NAME = "plan.json"
# the flags that change the restored frames or their encoding: segments made under others are not reused
SHAPING = ("model", "scale", "seed", "timesteps", "flow_iters", "shot_threshold", "min_shot_len", "codec", "crf",
           "preset", "pix_fmt", "container", "tile", "tile_overlap", "tile_margin", "tile_align", "tile_halo", "dtype",
           "vae_dtype", "frames_per_task", "color_fix", "vae_tile")


def settings(cfg: RestoreConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items() if k in SHAPING}


def folder(cfg: RestoreConfig, item: dict) -> str:
    """Where the segments of `item` (a video to restore) and their plan live."""
    from pipelines.restore.manifest import normalise

    return storage.join(normalise(cfg.dst), SEGMENTS_DIR, *item["relpath"].split("/"))


def group_shots(shot_starts: list[int], frames: int, frames_per_task: int) -> list[dict]:
    """Consecutive shots grouped into segments of at most `frames_per_task` frames where a shot
    allows: [{"start", "count", "starts": shot starts within the segment}]."""
    bounds = list(shot_starts) + [frames]
    segments: list[dict] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        last = segments[-1] if segments else None
        if last is not None and last["count"] + (b - a) <= frames_per_task:
            last["starts"].append(a - last["start"])
            last["count"] += b - a
        else:
            segments.append({"start": a, "count": b - a, "starts": [0]})
    return segments


def find_shots(local: str, cfg: RestoreConfig, info: video.VideoInfo) -> list[int]:
    """The frame index of every shot's first frame of a local video (`info`: its probe): one decode pass."""
    detector, starts, n = make_detector(cfg), [], 0
    for n, frame in enumerate(video.iter_frames(local, expected=info.frames)):
        if detector.push(frame) or n == 0:
            starts.append(n)
    if n + 1 != info.frames:
        raise video.VideoError(local, f"decoded {n + 1} of {info.frames} frames")
    return starts


def plan_video(item: dict, cfg: RestoreConfig) -> dict:
    """The plan of one video (see the module docstring); reuses a saved plan that still holds.
    Raises `video.VideoError` for an unreadable input."""
    path = storage.join(folder(cfg, item), PLAN_NAME)
    if cfg.force:                                          # --force: nothing of an earlier run is kept
        storage.remove_tree(folder(cfg, item))
    if storage.exists(path):
        saved = json.loads(storage.read_text(path))
        if saved.get("source_version") == item["source_version"] and saved.get("settings") == settings(cfg):
            return saved
        storage.remove_tree(folder(cfg, item))             # another input or other settings: start over
    with storage.local_copy(item["source"]) as local:
        try:
            info = video.probe(local)
            if info.frames <= cfg.frames_per_task:         # short: one task, as without segments
                return {"frames": info.frames, "segments": [{"start": 0, "count": info.frames, "starts": [0]}]}
            starts = find_shots(local, cfg, info)
        except video.VideoError as exc:
            raise video.VideoError(item["source"], exc.reason) from exc
    plan = {"source": item["source"], "source_version": item["source_version"], "settings": settings(cfg),
            "frames": info.frames, "fps": info.fps_fraction, "has_audio": info.has_audio, "width": info.width,
            "height": info.height, "shot_starts": starts,
            "segments": group_shots(starts, info.frames, cfg.frames_per_task)}
    if len(plan["segments"]) > 1:                          # one segment: restored whole, nothing to keep
        storage.write_text(path, json.dumps(plan, indent=1))
    return plan


def segment_url(cfg: RestoreConfig, item: dict, index: int) -> str:
    ext = os.path.splitext(item["output"])[1] or ".mp4"
    return storage.join(folder(cfg, item), f"{index:05d}{ext}")


def finished(cfg: RestoreConfig, item: dict, plan: dict) -> set[int]:
    """Segments an earlier run completed: file and marker present, same input version and size."""
    files = storage.list_files(folder(cfg, item))
    done = set()
    for k in range(len(plan["segments"])):
        url = segment_url(cfg, item, k)
        if url not in files or url + DONE_SUFFIX not in files:
            continue
        try:
            marker = json.loads(storage.read_text(url + DONE_SUFFIX))
        except (OSError, ValueError):
            continue
        if marker.get("source_version") == item["source_version"] and marker.get("output_size") == files[url]:
            done.add(k)
    return done


def segment_items(cfg: RestoreConfig, item: dict, plan: dict, done: set[int]) -> list[dict]:
    """The restoration items of the segments still to do (each names its segment as JSON)."""
    items = []
    for k, seg in enumerate(plan["segments"]):
        if k in done:
            continue
        spec = {**seg, "index": k, "of": len(plan["segments"]), "video_output": item["output"]}
        items.append({**item, "output": segment_url(cfg, item, k), "segment": json.dumps(spec)})
    return items


def join(cfg: RestoreConfig, item: dict, plan: dict, rows: list[dict], reused: int) -> dict:
    """The video's manifest row after joining its segments (`rows`: this run's segment rows);
    a failed segment fails the video (the finished ones stay for the next run)."""
    row = empty_row(item["source"], item["output"], item["relpath"], item["source_size"], cfg.model,
                    item["source_version"])
    row.update(frames=plan["frames"], width=plan["width"], height=plan["height"], fps=plan["fps"],
               has_audio=plan["has_audio"], shots=len(plan["shot_starts"]), segments=len(plan["segments"]),
               segments_reused=reused, finished_at=now_utc(),
               worker=",".join(sorted({r["worker"] for r in rows if r["worker"]})))   # who restored its segments
    for key in ("seconds", "decode_s", "shots_s", "restore_s", "encode_s", "io_s", "flow_s", "unet_s", "vae_s"):
        row[key] = float(sum(r[key] for r in rows))
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        row.update(error=f"segment {json.loads(failed[0]['segment'])['index']}: {failed[0]['error']}",
                   error_kind=failed[0]["error_kind"])
        return row
    parts = [segment_url(cfg, item, k) for k in range(len(plan["segments"]))]
    try:
        video.concat_videos(parts, item["output"], audio_from=item["source"] if plan["has_audio"] else None)
        info = json.loads(storage.read_text(parts[0] + DONE_SUFFIX))
        row.update(status="done", output_size=storage.size(item["output"]), out_width=info["out_width"],
                   out_height=info["out_height"])
        row["frames_per_s"] = row["frames"] / row["seconds"] if row["seconds"] > 0 else 0.0
        marker = {k: row[k] for k in ("source", "output", "frames", "shots", "source_size", "source_version",
                                      "output_size", "fps", "has_audio", "model", "out_width", "out_height")}
        storage.write_text(item["output"] + DONE_SUFFIX, json.dumps(marker, indent=1))
    except Exception as exc:  # noqa: BLE001 - a failed join is this video's row, not the job's end
        row.update(error=f"joining segments: {exc.__class__.__name__}: {exc}"[:2000], error_kind="internal")
        return row
    storage.remove_tree(folder(cfg, item))
    return row
