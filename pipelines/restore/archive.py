"""Restore a video archive (a folder or an s3:// prefix): one restored video per input.

`restore_archive(cfg)` is the whole job (`jobs/restore.py` only parses flags):

1. List the inputs (video extensions under `cfg.src`, sizes from one listing) and the
   outputs already under `cfg.dst`; read the manifest of earlier runs.
2. Skip what is complete: the output exists, its size and the input's size and content
   identity (size + mtime, or S3 ETag) match a `done` manifest row or the `<output>.done`
   marker written after it; an input that changed is restored again, its old output
   removed first. Inputs that failed as unreadable (corrupt, empty, truncated) are not
   retried unless `--retry-failed` or the input changed; other failures (out of memory, S3
   errors) are retried.
3. Restore the rest on Ray Data actors that load the model once (`map_batches` with a
   callable class on an `ActorPoolStrategy(size=N)`, `num_gpus` per actor) or in this
   process (`--no-ray`). A task is one video, or with `--frames-per-task N` one segment
   of a longer video (`pipelines.restore.segments`: planned at shot cuts, restored on any
   actor, resumable, joined when all are in: the frames equal the sequential
   restoration's). An actor takes `--batch-shots B` items at a time and restores them in
   lockstep (`pipelines.restore.lockstep`: frame t of each in one UNet batch). Inside a
   task (`stream.restore_items`) frames stream: decode -> shot starts -> restore with the
   recurrent state (reset at each cut, noise re-seeded per shot frame) -> encode; memory is
   bounded whatever the length. An output appears atomically (`VideoWriter`) only when
   every frame is in it; then its marker. Any error becomes a `failed` row: one bad video
   never stops the job.
4. Merge the rows into the manifest (parquet, atomic, one row per input, keyed by the
   input URL), print progress (frames/s, ETA) while running and a summary line at the end.
5. Kills: every temporary file (downloads, encodes, upload spools) lives in one run folder,
   removed at the end; a run first removes what a killed one left (its run folder, `.part`
   files under dst). SIGTERM stops the run at once (videos in flight are abandoned: no
   output appears for them) and the manifest is written; the job exits 143.

Segments never cut a shot: the recurrent state must see a shot's frames in order, and a
segment that started inside one would condition its first frame on a re-generated, not the
emitted, previous frame. A shot longer than N frames stays one task (splitting it with
warm-up frames restored and dropped is not done: its output would differ from the
sequential one at every split).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

from pipelines.common import storage
from pipelines.common.cli import UsageError
from pipelines.common.paths import REPO_ROOT
from pipelines.restore.config import RestoreConfig
from pipelines.restore.manifest import manifest_url, plan, read_manifest, write_manifest
from pipelines.restore.progress import Progress, ThrottledProgress, printing, progress_line
from pipelines.restore.restorers import device_for, load_restorer
from pipelines.restore import segments
from pipelines.restore.stream import DONE_SUFFIX, empty_row, now_utc, restore_items


# --------------------------------------------------------------------------- executors


class RestoreWorker:
    """Ray Data callable class (one per actor): loads the model once, restores one video per row."""

    def __init__(self, cfg: RestoreConfig, progress=None, tmpdir: str = ""):
        torch.set_num_threads(max(1, round(cfg.num_cpus)))
        self.cfg, self.device, self.tmpdir = cfg, device_for(cfg), tmpdir
        with storage.task_tempdir(tmpdir):             # an s3:// model is downloaded there
            self.restorer = load_restorer(cfg, self.device)
        self.progress = ThrottledProgress(progress) if progress is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        items = [_plain({k: batch[k][i] for k in ITEM_KEYS}) for i in range(len(batch["source"]))]
        with storage.task_tempdir(self.tmpdir):        # downloads, encodes: the run's folder
            rows = restore_items(items, self.restorer, self.cfg, device=self.device, progress=self.progress)
        return {k: [r[k] for r in rows] for k in rows[0]}


ITEM_KEYS = ("source", "output", "relpath", "source_size", "source_version", "segment")


def _plain(row: dict) -> dict:
    """Ray rows carry numpy scalars: back to Python values."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _run_local(cfg: RestoreConfig, todo: list[dict], progress: Progress) -> Iterator[dict]:
    device = device_for(cfg)
    restorer = load_restorer(cfg, device)
    for i in range(0, len(todo), cfg.batch_shots):   # --batch-shots items in lockstep
        yield from restore_items(todo[i:i + cfg.batch_shots], restorer, cfg, device=device, progress=progress)


def _ensure_ray(cfg: RestoreConfig):
    import ray

    if not ray.is_initialized():
        env = storage.worker_env()
        if not (cfg.ray_address or os.environ.get("RAY_ADDRESS")):     # a local Ray: workers import from here
            env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        ray.init(address=cfg.ray_address or None, runtime_env={"env_vars": env}, log_to_driver=True)
    return ray


def _run_ray(cfg: RestoreConfig, todo: list[dict], progress_actor, tmpdir: str) -> Iterator[dict]:
    """Ray Data: one block per video, at most one in flight per actor (no queue behind a long
    video). An actor that dies (OOM kill, segfault) is restarted and its video retried
    `max_retries` times; a video that still kills it gets a `failed` row (error_kind
    "crash") instead of failing the job."""
    ray = _ensure_ray(cfg)
    ctx = ray.data.DataContext.get_current()
    saved, ctx.max_errored_blocks = ctx.max_errored_blocks, len(todo)   # a crashed video: a row, not fatal
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(RestoreWorker,
                        fn_constructor_kwargs={"cfg": cfg, "progress": progress_actor, "tmpdir": tmpdir},
                        batch_size=cfg.batch_shots, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None,
                        compute=ray.data.ActorPoolStrategy(size=min(cfg.concurrency, len(todo)),
                                                           max_tasks_in_flight_per_actor=1),
                        # By default Ray Data retries a task forever: a video that kills its actor
                        # would loop. (Ray 2.60 warns that these remote args go in 2.64; its
                        # `ray_remote_args_fn` alternative is deprecated too.)
                        max_restarts=-1, max_task_retries=cfg.max_retries)
    seen = set()
    try:
        for row in ds.iter_rows():
            seen.add(row["output"])
            yield _plain(row)
    finally:
        ctx.max_errored_blocks = saved
    for item in todo:
        if item["output"] not in seen:
            row = empty_row(item["source"], item["output"], item["relpath"], item["source_size"], cfg.model,
                            item["source_version"])
            row.update(error=f"the worker died restoring this video ({cfg.max_retries + 1} attempts)",
                       error_kind="crash", finished_at=now_utc(), worker="", segment=item["segment"])
            yield row


def _check_model(cfg: RestoreConfig) -> None:
    """--model is an upscaler folder, and --timesteps lie in its scheduler's range."""
    if cfg.model == "bicubic":
        return
    if not storage.exists(storage.join(cfg.model, "unet", "config.json")):
        raise UsageError(f"--model {cfg.model}: not an upscaler directory (no unet/config.json); "
                         "or use --model bicubic")
    scheduler = storage.join(cfg.model, "scheduler", "scheduler_config.json")
    if cfg.timesteps and storage.exists(scheduler):
        n = int(json.loads(storage.read_text(scheduler)).get("num_train_timesteps", 1000))
        bad = [t for t in cfg.timesteps if not 0 <= t < n]
        if bad:
            raise UsageError(f"--timesteps {' '.join(map(str, cfg.timesteps))}: {bad} outside 0..{n - 1} "
                             f"(the model's scheduler has {n} steps)")


def _check_device(cfg: RestoreConfig) -> None:
    """--device names a torch device this run can use (with Ray: one its actors get)."""
    if cfg.device == "auto":
        return
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {cfg.device}: not a torch device ({exc})") from None
    if device.type == "cuda" and cfg.ray and cfg.num_gpus <= 0:
        raise UsageError(f"--device {cfg.device}: the Ray actors get no GPU; add --num-gpus 1")
    if device.type == "cuda" and not cfg.ray and not torch.cuda.is_available():
        raise UsageError(f"--device {cfg.device}: no CUDA device here (--no-ray runs in this process)")


def check_encoder(cfg: RestoreConfig) -> None:
    """--codec, --pix-fmt, --preset and --container as FFmpeg (PyAV) takes them, checked once
    before any video is read: a bad one is a `UsageError` naming the flag, not a failed row per video."""
    import fractions
    import tempfile

    import av

    try:
        codec = av.codec.Codec(cfg.codec, "w")
    except Exception as exc:  # noqa: BLE001 - UnknownCodecError and friends
        raise UsageError(f"--codec {cfg.codec}: not an encoder of this FFmpeg ({exc.__class__.__name__})") from None
    if codec.type != "video":
        raise UsageError(f"--codec {cfg.codec}: not a video encoder (it encodes {codec.type})")
    formats = [f.name for f in (codec.video_formats or [])]
    if cfg.pix_fmt and formats and cfg.pix_fmt not in formats:
        raise UsageError(f"--pix-fmt {cfg.pix_fmt}: {cfg.codec} does not take it (it takes {', '.join(formats)})")
    ctx = av.CodecContext.create(codec)
    ctx.width = ctx.height = 64
    ctx.pix_fmt = cfg.pix_fmt or (formats[0] if formats and "yuv420p" not in formats else "yuv420p")
    ctx.time_base, ctx.framerate = fractions.Fraction(1, 25), 25
    x26x = cfg.codec in ("libx264", "libx265")
    ctx.options = {"preset": cfg.preset, "crf": str(cfg.crf)} if x26x else {}
    error, said = None, ""
    with tempfile.TemporaryFile() as log:            # the encoder's own message goes in the one line
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            ctx.open()
        except Exception as exc:  # noqa: BLE001 - FFmpeg's ArgumentError & co.
            error = exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        said = " ".join(log.read().decode("utf-8", "replace").split())
    if error is not None:
        what = f"--preset {cfg.preset}" if x26x else f"--codec {cfg.codec}"
        raise UsageError(f"{what}: {cfg.codec} does not open with it ({said or error.__class__.__name__})")
    if cfg.container:
        ext = cfg.container.lstrip(".")
        with tempfile.TemporaryDirectory(prefix="d2vr-check-", dir=storage.temp_root()) as tmp:
            try:
                with av.open(os.path.join(tmp, f"probe.{ext}"), "w") as out:
                    out.add_stream(cfg.codec, rate=25)
            except Exception as exc:  # noqa: BLE001
                raise UsageError(f"--container {cfg.container}: no FFmpeg muxer takes .{ext} with --codec "
                                 f"{cfg.codec} ({exc.__class__.__name__})") from None


class Terminated(BaseException):
    """SIGTERM reached the job: it stops taking videos, abandons those in flight (their
    partial encodes are in the run folder, removed on exit) and writes the manifest. A
    BaseException, so that a video's own `except Exception` does not take it for its failure."""

    def __init__(self, done: int = 0, manifest: str = ""):
        super().__init__(f"terminated by SIGTERM: {done} videos finished this run, manifest {manifest or '-'}")
        self.done, self.manifest = done, manifest


class _SigtermGuard:
    """While a restore runs (main thread only), SIGTERM raises `Terminated` instead of Ray's
    handler aborting the process (exit 134, no manifest). `install` again after `ray.init`,
    which sets its own; a second SIGTERM gets the handler we displaced."""

    def __init__(self):
        self.previous, self.active = None, threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame):
        signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)
        raise Terminated()

    def install(self) -> None:
        if self.active and signal.getsignal(signal.SIGTERM) != self._handler:
            self.previous = signal.signal(signal.SIGTERM, self._handler)

    def restore(self) -> None:
        if self.active and signal.getsignal(signal.SIGTERM) == self._handler:
            signal.signal(signal.SIGTERM, self.previous if self.previous is not None else signal.SIG_DFL)


def restore_archive(cfg: RestoreConfig) -> dict:
    """Restore every video under cfg.src that has no complete output under cfg.dst; see module
    doc. Temporary files live in a run folder removed at the end (a killed run's, and the
    `.part` files it left in dst, go first); SIGTERM raises `Terminated` once the manifest is written."""
    guard = _SigtermGuard()
    guard.install()
    try:
        with storage.run_tempdir() as tmpdir:
            return _restore_archive(cfg, tmpdir, guard)
    finally:
        guard.restore()


def _restore_archive(cfg: RestoreConfig, tmpdir: str, guard: _SigtermGuard) -> dict:
    t0 = time.time()
    storage.check_access(cfg.src, "--src")
    storage.check_access(cfg.dst, "--dst")
    check_encoder(cfg)
    _check_device(cfg)
    murl = manifest_url(cfg)
    rows = read_manifest(murl)
    todo, skipped, rejected = plan(cfg, rows)
    if todo:
        _check_model(cfg)
    storage.remove_stale_parts(cfg.dst)
    for item in todo:                     # its input changed: the old output must not outlive a failure
        if item.pop("stale"):
            storage.remove(item["output"] + DONE_SUFFIX)
            storage.remove(item["output"])
    recovered = [u for u, r in skipped.items() if rows.get(u) is not r]   # from markers: no row yet
    rows.update(skipped)
    print(f"[restore] {len(todo) + len(skipped) + len(rejected)} videos under {cfg.src}: {len(todo)} to restore, "
          f"{len(skipped)} skipped (complete, or unreadable and unchanged), {len(rejected)} not restorable",
          flush=True)
    done_now: list[dict] = list(rejected.values())   # a failed row each: special file, bad link, unsafe path
    for row in done_now:
        rows[row["source"]] = row
        _print_row(row)
    stopped = False
    try:
        if todo:
            _run(cfg, todo, murl, rows, done_now, tmpdir, guard)
    except Terminated:
        stopped = True
    finally:                              # also after an interrupted run: keep what finished
        if done_now or recovered or stopped:
            write_manifest(murl, rows)
    if stopped:
        raise Terminated(sum(r["status"] == "done" for r in done_now), murl)
    summary = _summary(cfg, murl, done_now, skipped, time.time() - t0)
    print(f"[restore] summary: {json.dumps({k: v for k, v in summary.items() if k != 'rows'})}", flush=True)
    return summary


def _run(cfg: RestoreConfig, todo: list[dict], murl: str, rows: dict[str, dict], done_now: list[dict],
         tmpdir: str, guard: _SigtermGuard) -> None:
    """Restore `todo` (Ray Data actors or in-process), recording rows as videos finish."""

    def record(row: dict) -> None:
        row = {k: v for k, v in row.items() if k != "segment"}
        rows[row["source"]] = row
        done_now.append(row)
        _print_row(row)

    items = [{**item, "segment": ""} for item in todo]
    videos: dict[str, _Split] = {}
    if cfg.frames_per_task:
        items, videos = _split(cfg, items, tmpdir, record)
        guard.install()                   # a ray.init in the planning set its own SIGTERM handler
    if not items:
        return
    actor = None
    if cfg.ray:
        ray = _ensure_ray(cfg)
        guard.install()                   # ray.init set its own SIGTERM handler
        actor = ray.remote(Progress).options(num_cpus=0).remote(len(items))
        snapshot, runner = (lambda: ray.get(actor.snapshot.remote())), _run_ray(cfg, items, actor, tmpdir)
    else:
        local = Progress(len(items))
        snapshot, runner = local.snapshot, _run_local(cfg, items, local)
    last_checkpoint = time.time()
    try:
        with printing(snapshot, cfg.progress_every_s):
            for row in runner:
                if row["segment"]:                       # one segment of a long video
                    split = videos[json.loads(row["segment"])["video_output"]]
                    split.rows.append(row)
                    if len(split.rows) < split.left:
                        continue
                    row = segments.join(cfg, split.item, split.plan, split.rows, split.reused)
                record(row)
                if time.time() - last_checkpoint > cfg.manifest_every_s:
                    write_manifest(murl, rows)
                    last_checkpoint = time.time()
        print(progress_line(snapshot()), flush=True)
    finally:
        if actor is not None:
            ray.kill(actor)


class _Split:
    """A long video restored as segments: its plan, and the segment rows that came back."""

    def __init__(self, item: dict, plan: dict, left: int, reused: int):
        self.item, self.plan, self.left, self.reused, self.rows = item, plan, left, reused, []


def _split(cfg: RestoreConfig, items: list[dict], tmpdir: str, record) -> tuple[list[dict], dict[str, _Split]]:
    """Plan every video (`segments.plan_video`, as Ray tasks or here): short ones stay one item,
    long ones become the items of their unfinished segments; a video that cannot be planned
    gets its failed row, one whose segments are all finished is joined now."""
    out, videos = [], {}
    for item, (plan, error, kind) in zip(items, _plans(cfg, items, tmpdir)):
        if plan is None:
            row = empty_row(item["source"], item["output"], item["relpath"], item["source_size"], cfg.model,
                            item["source_version"])
            record({**row, "error": error, "error_kind": kind, "finished_at": now_utc(), "worker": ""})
            continue
        if len(plan["segments"]) == 1:
            out.append(item)
            continue
        done = segments.finished(cfg, item, plan)
        todo = segments.segment_items(cfg, item, plan, done)
        print(f"[restore] {item['relpath']}: {plan['frames']} frames, {len(plan['shot_starts'])} shots -> "
              f"{len(plan['segments'])} segments ({len(done)} finished earlier)", flush=True)
        if not todo:
            record(segments.join(cfg, item, plan, [], len(done)))
            continue
        videos[item["output"]] = _Split(item, plan, len(todo), len(done))
        out += todo
    return out, videos


def _plan_task(item: dict, cfg: RestoreConfig, tmpdir: str) -> tuple[dict | None, str, str]:
    """(plan, "", "") or (None, error, error_kind) of one video."""
    from pipelines.common import video

    with storage.task_tempdir(tmpdir):
        try:
            return segments.plan_video(item, cfg), "", ""
        except video.VideoError as exc:
            return None, str(exc), "input"
        except Exception as exc:  # noqa: BLE001 - a row, not the job's end
            return None, f"planning: {exc.__class__.__name__}: {exc}"[:2000], "internal"


def _plans(cfg: RestoreConfig, items: list[dict], tmpdir: str) -> list[tuple[dict | None, str, str]]:
    if not cfg.ray:
        return [_plan_task(item, cfg, "") for item in items]
    ray = _ensure_ray(cfg)
    task = ray.remote(_plan_task).options(num_cpus=1, max_retries=cfg.max_retries)
    refs = [task.remote(item, cfg, tmpdir) for item in items]
    results = []
    for ref in refs:
        try:
            results.append(ray.get(ref))
        except ray.exceptions.RayError as exc:        # the planning worker died
            results.append((None, f"planning: {exc.__class__.__name__}", "crash"))
    return results


def _print_row(row: dict) -> None:
    name = row["relpath"] or row["source"]
    if row["status"] == "done":
        print(f"[restore] done {name}: {row['frames']} frames, {row['shots']} shots, "
              f"{row['width']}x{row['height']} -> {row['out_width']}x{row['out_height']}, "
              f"{row['seconds']:.1f} s ({row['frames_per_s']:.2f} frames/s) -> {row['output']}", flush=True)
    else:
        print(f"[restore] FAILED {name} ({row['error_kind']}): {row['error']}", flush=True)


def _summary(cfg: RestoreConfig, murl: str, rows: list[dict], skipped: dict[str, dict], seconds: float) -> dict:
    done = [r for r in rows if r["status"] == "done"]
    frames = sum(r["frames"] for r in done)
    return {"videos": len(rows) + len(skipped), "restored": len(done), "failed": len(rows) - len(done),
            "skipped": sum(r.get("status") != "failed" for r in skipped.values()),
            "skipped_failed": sum(r.get("status") == "failed" for r in skipped.values()),
            "frames": frames, "seconds": round(seconds, 2),
            "frames_per_s": round(frames / seconds, 3) if seconds > 0 else 0.0,
            "manifest": murl, "dst": cfg.dst, "rows": rows}
