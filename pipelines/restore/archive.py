"""Restore a video archive (a folder or an s3:// prefix): one restored video per input.

`restore_archive(cfg)` is the whole job (`jobs/restore.py` only parses flags):

1. List the inputs (video extensions under `cfg.src`, sizes from one listing) and the
   outputs already under `cfg.dst`; read the manifest of earlier runs.
2. Skip what is complete: the output exists, its size and the input's size match a `done`
   manifest row or the `<output>.done` marker written after it. Inputs that failed as
   unreadable (corrupt, empty, truncated) are not retried unless `--retry-failed` or the
   input changed; other failures (out of memory, S3 errors) are retried.
3. Restore the rest, one video per task, on Ray Data actors that load the model once
   (`map_batches` with a callable class on an `ActorPoolStrategy(size=N)`, `batch_size=1`,
   `num_gpus` per actor) or in this process (`--no-ray`). Inside a task (`restore_video`),
   frames stream: decode one -> shot detector -> restore with the recurrent state (reset
   at each cut, noise re-seeded per shot frame) -> encode; memory is bounded whatever the
   length. The output appears atomically (`VideoWriter`) only when every frame is in it;
   then the marker. Any error becomes a `failed` row: one bad video never stops the job.
4. Merge the rows into the manifest (parquet, atomic, one row per input, keyed by the
   input URL), print progress (frames/s, ETA) while running and a summary line at the end.

Why one row = one video and no chunking: the recurrent state must see the frames of a
shot in order, and Ray Data gives no order across blocks, so a task decodes its video
itself. Chunking long shots (with a few warm-up frames restored and dropped) would spread
one long video over several actors, but costs the warm-up frames twice and makes each
chunk's first kept frame depend on a re-generated, not the emitted, previous frame: the
output would differ from the sequential one at every chunk start (by how much depends on
how fast the trained student forgets its state; not measured). Not done: parallelism
comes from many videos, and a restored shot equals the shot restored on its own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.common import storage, video
from pipelines.common.paths import REPO_ROOT
from pipelines.restore.tiling import TileConfig, TiledRestorer

VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "avi", "webm", "m4v", "mpg", "mpeg", "ts", "wmv", "flv")
MANIFEST_NAME = "manifest.parquet"
DONE_SUFFIX = ".done"


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
    src: str = ""                          # input archive: a folder or s3://bucket/prefix
    dst: str = ""                          # output root: restored videos keep their relative paths
    model: str = "bicubic"                 # saved upscaler directory (local or s3://), or "bicubic" (baseline)
    scale: int = 4                         # upscaling factor of the bicubic baseline (a model brings its own)
    manifest: str = ""                     # manifest parquet; "" = <dst>/manifest.parquet
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS  # input file extensions (case-insensitive)
    codec: str = "libx264"                 # output video codec (PyAV / FFmpeg name)
    crf: int = 18                          # constant rate factor: 18 is visually lossless for x264
    preset: str = "medium"                 # x264/x265 speed preset
    pix_fmt: str = ""                      # output pixel format; "" = yuv420p (yuv444p for odd sizes)
    container: str = ""                    # output extension, e.g. "mp4"; "" = the input's (whose muxer takes its audio)
    tile: int = 256                        # LR px: frames with a larger side are restored in tiles (0 = never)
    tile_overlap: int = 32                 # LR px shared by neighbouring tiles
    tile_margin: int = 4                   # LR px at a shared tile edge with zero blend weight
    tile_align: int = 8                    # LR px: tile starts are multiples (the x4 UNet downsamples by 8)
    seed: int = 0                          # noise seed: frame t of a shot uses seed + t (= restore_clip)
    timesteps: tuple[int, ...] = ()        # student timesteps; () = the model's (the paper's 750/500/250/0)
    flow_iters: int = 0                    # flow refinement iterations; 0 = the flow net's default
    shot_threshold: float = -1.0           # shot detector threshold; < 0 = the detector's default
    min_shot_len: int = -1                 # frames; < 0 = the detector's default
    ray: bool = True                       # run on Ray Data actors; --no-ray: sequentially in this process
    ray_address: str = ""                  # "" = the running cluster or a new local Ray
    concurrency: int = 1                   # restoring actors (one model copy each)
    num_gpus: float = 0.0                  # GPUs per actor (1 on a GPU cluster)
    num_cpus: float = 1.0                  # CPUs per actor (also its torch threads)
    device: str = "auto"                   # "auto" = cuda when the actor has a GPU, else cpu
    dtype: str = "auto"                    # UNet dtype: auto = bf16 on cuda, fp32 on cpu
    vae_dtype: str = "float32"             # the x4 VAE overflows in fp16: keep fp32 unless measured
    retry_failed: bool = False             # also retry inputs that failed as unreadable before
    max_retries: int = 2                   # retries of a video whose actor died (OOM kill, segfault)
    force: bool = False                    # restore everything again, even complete outputs
    profile: bool = False                  # time flow / unet / vae separately (syncs CUDA per section)
    progress_every_s: float = 10.0         # seconds between progress lines
    manifest_every_s: float = 60.0         # seconds between manifest checkpoints while running

    def __post_init__(self):
        if self.scale < 1 or self.concurrency < 1 or self.crf < 0:
            raise ValueError(f"scale, concurrency must be >= 1 and crf >= 0: {self}")

    def tile_config(self) -> TileConfig:
        return TileConfig(tile=self.tile, overlap=self.tile_overlap, margin=self.tile_margin, align=self.tile_align)


# --------------------------------------------------------------------------- restorers


class Restorer(Protocol):
    """One frame at a time with an explicit recurrent state (None = first frame of a shot).

    `noise_channels`: channels of the LR-sized N(0, 1) tensors one frame consumes, in draw
    order (the caller draws them, so that tiles can share one whole-frame draw).
    `state_from(lq, hr)`: the state that a frame and its restoration leave (for tiles).
    """

    scale: int
    noise_channels: tuple[int, ...]

    def restore_frame(self, lq: torch.Tensor, state: Any, noise: Sequence[torch.Tensor] | None = None
                      ) -> tuple[torch.Tensor, Any]: ...

    def state_from(self, lq: torch.Tensor, hr: torch.Tensor) -> Any: ...


class BicubicRestorer:
    """The non-learned baseline: bicubic (or nearest) upscaling, stateless, noise-free."""

    noise_channels: tuple[int, ...] = ()

    def __init__(self, scale: int = 4, mode: str = "bicubic"):
        if mode not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"mode must be bicubic, bilinear or nearest, got {mode!r}")
        self.scale, self.mode = int(scale), mode

    def restore_frame(self, lq, state=None, noise=None):
        kw = {} if self.mode == "nearest" else {"align_corners": False}
        hr = F.interpolate(lq.float(), scale_factor=self.scale, mode=self.mode, **kw).clamp(0, 1)
        return hr, None

    def state_from(self, lq, hr):
        return None


class DiffusionRestorer:
    """`models.upscaler.VideoUpscaler`'s few-step student sampler with caller-drawn noise.

    Same maths and the same draw order as `VideoUpscaler.restore_frame(sampler="student")`
    (low-res augmentation noise, x_T, one re-noise per later timestep): given the draws of
    a generator it returns exactly what `restore_frame(generator=...)` returns (tested).
    Taking the noise as tensors lets a tiled frame use crops of one whole-frame draw.
    """

    def __init__(self, upscaler, timesteps: Sequence[int] | None = None):
        self.up = upscaler
        self.scale = int(upscaler.scale)
        self.timesteps = tuple(timesteps or upscaler.cfg.student_timesteps)
        lat = int(upscaler.latent_channels)
        self.noise_channels = (3,) + (lat,) * len(self.timesteps)

    def randn(self, shape, generator):
        return self.up.randn(shape, generator)

    def state_from(self, lq, hr):
        from models.upscaler import TemporalState

        return TemporalState(lq=lq.to(self.up.device), hr=hr.to(self.up.device))

    @torch.no_grad()
    def restore_frame(self, lq, state=None, noise=None):
        from models.upscaler import TemporalState

        up = self.up
        lq = up.check_lq(lq)
        b, _, h, w = lq.shape
        noise = draw_noise(self, b, h, w, None) if noise is None else [n.to(up.device) for n in noise]
        cond = up.lowres_condition(lq, noise=noise[0])
        temporal = up.temporal_input(lq, state)
        x, x0 = noise[1], noise[1]
        for i, t in enumerate(self.timesteps):
            x0 = up.predict_x0("student", x, t, cond, temporal)
            if i + 1 < len(self.timesteps):
                t_next = torch.full((b,), self.timesteps[i + 1], dtype=torch.long, device=up.device)
                x = up.add_noise(x0, t_next, noise[2 + i])
        hr = up.decode(x0, lq=lq)
        return hr, TemporalState(lq=lq, hr=hr)

    def section_seconds(self) -> dict[str, float]:
        timer = getattr(self.up, "timer", None)
        return dict(timer.seconds) if timer is not None else {}


def draw_noise(restorer, batch: int, height: int, width: int, generator: torch.Generator | None
               ) -> list[torch.Tensor]:
    """The N(0, 1) tensors one (batch, 3, height, width) frame consumes, in draw order."""
    randn = getattr(restorer, "randn", None) or (lambda shape, g: torch.randn(shape, generator=g))
    return [randn((batch, c, height, width), generator) for c in restorer.noise_channels]


def _device(cfg: RestoreConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() and (cfg.num_gpus > 0 or not cfg.ray) else "cpu")


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
            "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[name]


def load_restorer(cfg: RestoreConfig, device: torch.device | str | None = None) -> Restorer:
    """The restorer named by `cfg.model`, on `device`, wrapped for tiling when cfg.tile > 0.

    A model directory holds the upscaler bundle (`unet/ vae/ scheduler/ low_res_scheduler/
    prompt_embeds.safetensors`, `UpscalerBundle.save_pretrained`), optionally a trained
    student UNet in `student/`, the DRFA flow net as `flow.safetensors`, and the settings it was
    trained with in `restorer.json` (what jobs/distill.py exports).
    """
    device = torch.device(device) if device is not None else _device(cfg)
    if cfg.model == "bicubic":
        inner: Restorer = BicubicRestorer(cfg.scale)
    else:
        inner = DiffusionRestorer(_load_upscaler(cfg, device), cfg.timesteps or None)
    return TiledRestorer(inner, cfg.tile_config()) if cfg.tile else inner


def _load_upscaler(cfg: RestoreConfig, device: torch.device):
    """The model folder exported by jobs/distill.py, with the settings it was trained with
    (its restorer.json); --flow-iters, when given, overrides the flow net's default."""
    from models.upscaler import SectionTimer
    from pipelines.train.distill import load_restorer as load_model_folder

    overrides = {"flow_iters": cfg.flow_iters} if cfg.flow_iters else {}
    try:
        up = load_model_folder(cfg.model, device, dtype=_dtype(cfg.dtype, device),
                               vae_dtype=_dtype(cfg.vae_dtype, device), **overrides)
    except ValueError as exc:
        raise ValueError(f"--model {cfg.model}: not an upscaler directory ({exc})") from exc
    if cfg.profile:
        up.timer = SectionTimer()
    return up


# --------------------------------------------------------------------------- one video


class Stages:
    """Wall-clock seconds per named stage (decode, shots, restore, encode, io)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start


@dataclasses.dataclass
class StreamStats:
    frames: int = 0
    shot_starts: list[int] = dataclasses.field(default_factory=list)   # frame index of each shot's first frame


def make_detector(cfg: RestoreConfig):
    """A fresh streaming shot detector (`pipelines.data.shots.ShotDetector`) for one video."""
    from pipelines.data.shots import ShotDetector

    kwargs = {}
    if cfg.shot_threshold >= 0:
        kwargs["threshold"] = cfg.shot_threshold
    if cfg.min_shot_len >= 0:
        kwargs["min_shot_len"] = cfg.min_shot_len
    return ShotDetector(**kwargs)


def restore_frames(frames: Iterable[np.ndarray], restorer: Restorer, *, detector=None, seed: int = 0,
                   device: torch.device | str = "cpu", stats: StreamStats | None = None,
                   stages: Stages | None = None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames in order -> restored (s*H, s*W, 3) uint8 frames, one at a time.

    The recurrent state is reset where `detector.push(frame)` says a shot starts (and at
    frame 0); frame t of a shot draws its noise from a generator seeded with `seed + t`,
    so a shot is restored exactly as it would be as a video of its own.
    """
    stats = stats if stats is not None else StreamStats()
    stages = stages if stages is not None else Stages()
    generator = torch.Generator("cpu")
    state, t, it = None, 0, iter(frames)
    while True:
        with stages("decode"):
            frame = next(it, None)
        if frame is None:
            return
        with stages("shots"):
            cut = bool(detector.push(frame)) if detector is not None else False
        if cut or stats.frames == 0:
            state, t = None, 0
            stats.shot_starts.append(stats.frames)
        with stages("restore"):
            lq = video.to_float(frame)[None].to(device)                      # (1, 3, H, W)
            noise = draw_noise(restorer, 1, lq.shape[-2], lq.shape[-1], generator.manual_seed(seed + t))
            hr, state = restorer.restore_frame(lq, state, noise)             # (1, 3, sH, sW)
            out = video.to_uint8(hr[0])                                      # syncs the device
        t += 1
        stats.frames += 1
        yield out


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def empty_row(source: str, output: str, relpath: str = "", source_size: int = -1, model: str = "") -> dict:
    """A manifest row; every column always present with one type (parquet-friendly)."""
    return {"source": source, "relpath": relpath, "output": output, "status": "failed",
            "frames": 0, "shots": 0, "width": 0, "height": 0, "out_width": 0, "out_height": 0,
            "fps": "", "has_audio": False, "seconds": 0.0, "frames_per_s": 0.0, "error": "",
            "error_kind": "", "source_size": int(source_size), "output_size": -1, "model": model,
            "tiles": 0, "worker": f"{socket.gethostname()}:{os.getpid()}", "finished_at": "",
            "decode_s": 0.0, "shots_s": 0.0, "restore_s": 0.0, "encode_s": 0.0, "io_s": 0.0,
            "flow_s": 0.0, "unet_s": 0.0, "vae_s": 0.0}


def restore_video(source: str, output: str, restorer: Restorer, cfg: RestoreConfig, *,
                  relpath: str = "", source_size: int = -1, device: torch.device | str = "cpu",
                  progress=None) -> dict:
    """Restore one video to `output` (atomic) + `<output>.done`; returns its manifest row.

    Never raises for a bad video: the row says `failed`, the reason, and whether the input
    itself is unreadable (`error_kind` "input", not retried by default) or not ("internal").
    """
    row = empty_row(source, output, relpath, source_size, cfg.model)
    stages, stats = Stages(), StreamStats()
    start = time.perf_counter()
    before, expected = _sections(restorer), 0
    try:
        with contextlib.ExitStack() as stack:
            # 1. The input, once on local disk (S3: one download; probe, frames and audio read it).
            with stages("io"):
                local = stack.enter_context(storage.local_copy(source))
            info = _probe_input(local, source)
            expected = info.frames
            row.update(frames=info.frames, width=info.width, height=info.height, fps=info.fps_fraction,
                       has_audio=info.has_audio)
            if progress is not None:
                progress.start_video(info.frames)
            # 2. decode -> shots -> restore -> encode, one frame at a time.
            frames = _input_errors(video.iter_frames(local, expected=info.frames), source)
            writer = video.VideoWriter(output, fps=info.fps_fraction, crf=cfg.crf, codec=cfg.codec,
                                       preset=cfg.preset, audio_from=local if info.has_audio else None,
                                       pix_fmt=cfg.pix_fmt or None)
            stack.callback(writer.abort)          # a no-op after close; cleans up after an error
            for hr in restore_frames(frames, restorer, detector=make_detector(cfg), seed=cfg.seed,
                                     device=device, stats=stats, stages=stages):
                with stages("encode"):
                    writer.write(hr)
                if progress is not None:
                    progress.add_frames(1)
                row["out_height"], row["out_width"] = hr.shape[:2]
            if writer.frames_written != info.frames:
                raise _InputError(video.VideoError(source, f"decoded {writer.frames_written} of "
                                                           f"{info.frames} frames"))
            with stages("encode"):                # flush + audio copy + atomic upload
                writer.close()
        # 3. The output is complete and visible; the marker says so (written after it).
        row.update(status="done", shots=len(stats.shot_starts), output_size=storage.size(output),
                   tiles=int(getattr(restorer, "tiles_last_frame", 1)))
        marker = {k: row[k] for k in ("source", "output", "frames", "shots", "source_size", "output_size",
                                      "fps", "has_audio", "model", "out_width", "out_height")}
        storage.write_text(output + DONE_SUFFIX, json.dumps(marker, indent=1))
    except _InputError as exc:
        row.update(status="failed", error=str(exc.error), error_kind="input")
    except Exception as exc:  # noqa: BLE001 - one bad video must not stop the archive
        row.update(status="failed", error=f"{exc.__class__.__name__}: {exc}"[:2000], error_kind="internal")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    finally:
        if progress is not None:
            progress.end_video(expected, stats.frames)
    seconds = time.perf_counter() - start
    after = _sections(restorer)
    row.update(seconds=seconds, frames_per_s=stats.frames / seconds if seconds > 0 else 0.0, finished_at=_now())
    for name in ("decode", "shots", "restore", "encode", "io"):
        row[f"{name}_s"] = float(stages.seconds.get(name, 0.0))
    for name in ("flow", "unet", "vae"):
        row[f"{name}_s"] = float(after.get(name, 0.0) - before.get(name, 0.0))
    return row


def _sections(restorer) -> dict[str, float]:
    """Cumulative flow / unet / vae seconds of a (possibly tiled) diffusion restorer."""
    inner = getattr(restorer, "inner", restorer)
    return dict(inner.section_seconds()) if hasattr(inner, "section_seconds") else {}


class _InputError(Exception):
    """The input video itself is unreadable (wraps the VideoError naming it)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _probe_input(local: str, source: str) -> video.VideoInfo:
    try:
        return video.probe(local)
    except video.VideoError as exc:
        raise _InputError(video.VideoError(source, exc.reason)) from exc


def _input_errors(frames: Iterator[np.ndarray], source: str) -> Iterator[np.ndarray]:
    """Re-raise decode errors of the input as input errors naming the source URL."""
    try:
        yield from frames
    except video.VideoError as exc:
        raise _InputError(video.VideoError(source, exc.reason)) from exc


# --------------------------------------------------------------------------- progress


class Progress:
    """Frames done / expected across workers; `line()` says frames/s and the ETA.

    Videos not yet probed are counted at the mean length of those probed so far.
    """

    def __init__(self, videos: int):
        self.videos, self.started, self.finished = videos, 0, 0
        self.frames_done, self.frames_known, self.t0 = 0, 0, time.time()

    def start_video(self, frames: int) -> None:
        self.started += 1
        self.frames_known += int(frames)

    def add_frames(self, n: int) -> None:
        self.frames_done += int(n)

    def end_video(self, expected: int, done: int) -> None:
        """`expected` = the probed frame count (0: failed before probing), `done` = restored."""
        self.finished += 1
        if expected <= 0:
            self.started += 1
        self.frames_known += int(done) - int(expected)  # a failure ends early

    def snapshot(self) -> dict:
        elapsed = max(time.time() - self.t0, 1e-9)
        per_video = self.frames_known / max(self.started, 1)
        total = self.frames_known + per_video * max(self.videos - self.started, 0)
        rate = self.frames_done / elapsed
        eta = (total - self.frames_done) / rate if rate > 0 else float("nan")
        return {"videos": self.videos, "finished": self.finished, "frames": self.frames_done,
                "frames_total": round(total), "fps": rate, "eta_s": eta, "elapsed_s": elapsed}


def progress_line(snap: dict) -> str:
    eta = "?" if not math.isfinite(snap["eta_s"]) else str(datetime.timedelta(seconds=int(snap["eta_s"])))
    return (f"[restore] {snap['finished']}/{snap['videos']} videos, {snap['frames']}/~{snap['frames_total']} "
            f"frames, {snap['fps']:.2f} frames/s, ETA {eta}, elapsed {snap['elapsed_s']:.0f} s")


class _ThrottledProgress:
    """Worker side of a Ray progress actor: frame counts are sent at most once a second."""

    def __init__(self, actor, every_s: float = 1.0):
        self.actor, self.every_s, self.pending, self.last = actor, every_s, 0, time.time()

    def start_video(self, frames):
        self.actor.start_video.remote(frames)

    def add_frames(self, n):
        self.pending += n
        if time.time() - self.last >= self.every_s:
            self._flush()

    def end_video(self, expected, done):
        self._flush()
        self.actor.end_video.remote(expected, done)

    def _flush(self):
        if self.pending:
            self.actor.add_frames.remote(self.pending)
        self.pending, self.last = 0, time.time()


@contextlib.contextmanager
def _printing(snapshot: Callable[[], dict], every_s: float) -> Iterator[None]:
    """Print a progress line every `every_s` seconds from a background thread."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):
                print(progress_line(snapshot()), flush=True)

    thread = threading.Thread(target=loop, name="restore-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- listing, manifest


def list_files(root: str) -> dict[str, int]:
    """{url: size} of every file under `root` (one recursive listing; {} if absent)."""
    fs, path = storage.filesystem(root)
    if hasattr(fs, "invalidate_cache"):
        fs.invalidate_cache()
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        return {}
    remote = str(root).startswith("s3://")
    return {(f"s3://{p}" if remote else p): int(info.get("size") or 0)
            for p, info in found.items() if info.get("type", "file") == "file"}


def manifest_url(cfg: RestoreConfig) -> str:
    return cfg.manifest or storage.join(cfg.dst, MANIFEST_NAME)


def read_manifest(url: str) -> dict[str, dict]:
    """{source: row} of a manifest; {} when there is none yet."""
    import pandas as pd

    if not storage.exists(url):
        return {}
    frame = pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    return {r["source"]: r for r in frame.to_dict("records")}


def write_manifest(url: str, rows: dict[str, dict]) -> None:
    """Atomically write all rows (sorted by source) as parquet."""
    import pandas as pd

    frame = pd.DataFrame(sorted(rows.values(), key=lambda r: r["source"]))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.write_bytes(url, buffer.getvalue())


def _normalise(url: str) -> str:
    return str(url).rstrip("/") if storage.is_remote(url) else os.path.abspath(url)


def _output_url(cfg: RestoreConfig, relpath: str) -> str:
    if cfg.container:
        relpath = os.path.splitext(relpath)[0] + "." + cfg.container.lstrip(".")
    return storage.join(_normalise(cfg.dst), relpath)


def _complete(item: dict, outputs: dict[str, int], row: dict | None) -> dict | None:
    """The row of an earlier run whose output of `item` is complete, else None."""
    out, size = item["output"], outputs.get(item["output"])
    if size is None:
        return None
    if row and row.get("status") == "done" and row.get("source_size") == item["source_size"] \
            and row.get("output_size") == size:
        return row
    marker = out + DONE_SUFFIX
    if marker not in outputs:
        return None
    try:
        info = json.loads(storage.read_text(marker))
    except (OSError, ValueError):
        return None
    if info.get("source_size") != item["source_size"] or info.get("output_size") != size:
        return None
    recovered = empty_row(item["source"], out, item["relpath"], item["source_size"], info.get("model", ""))
    recovered.update({k: v for k, v in info.items() if k in recovered}, status="skipped", finished_at=_now())
    return recovered


def plan(cfg: RestoreConfig, previous: dict[str, dict]) -> tuple[list[dict], dict[str, dict]]:
    """(items to restore, {source: row} of inputs skipped), from two listings and the manifest."""
    if not cfg.src or not cfg.dst:
        raise ValueError("--src and --dst are required")
    src, dst = _normalise(cfg.src), _normalise(cfg.dst)
    if src == dst:
        raise ValueError(f"--dst must differ from --src ({cfg.src})")
    if not storage.is_remote(src) and not os.path.isdir(src):
        raise ValueError(f"--src {cfg.src}: no such folder")
    if dst.startswith("s3://") and not storage.exists("s3://" + dst[len("s3://"):].split("/")[0]):
        raise ValueError(f"--dst {cfg.dst}: the bucket does not exist")
    extensions = {e.lower().lstrip(".") for e in cfg.extensions}
    sources = {u: s for u, s in list_files(src).items()     # outputs inside src are not inputs
               if u.rsplit(".", 1)[-1].lower() in extensions and not u.startswith(dst + "/")}
    outputs = list_files(cfg.dst)
    todo, skipped, seen = [], {}, {}
    for url, size in sorted(sources.items()):
        relpath = storage.relative_to(url, src)
        item = {"source": url, "relpath": relpath, "output": _output_url(cfg, relpath), "source_size": size}
        if item["output"] in seen:
            raise ValueError(f"{url} and {seen[item['output']]} would both be restored to {item['output']}")
        seen[item["output"]] = url
        row = previous.get(url)
        done = None if cfg.force else _complete(item, outputs, row)
        if done is not None:
            skipped[url] = done
        elif (row and row.get("status") == "failed" and row.get("error_kind") == "input"
              and row.get("source_size") == size and not cfg.retry_failed and not cfg.force):
            skipped[url] = row              # known unreadable and unchanged: keep its failed row
        else:
            todo.append(item)
    return todo, skipped


# --------------------------------------------------------------------------- executors


class RestoreWorker:
    """Ray Data callable class (one per actor): loads the model once, restores one video per row."""

    def __init__(self, cfg: RestoreConfig, progress=None):
        torch.set_num_threads(max(1, round(cfg.num_cpus)))
        self.cfg, self.device = cfg, _device(cfg)
        self.restorer = load_restorer(cfg, self.device)
        self.progress = _ThrottledProgress(progress) if progress is not None else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [restore_video(str(batch["source"][i]), str(batch["output"][i]), self.restorer, self.cfg,
                              relpath=str(batch["relpath"][i]), source_size=int(batch["source_size"][i]),
                              device=self.device, progress=self.progress)
                for i in range(len(batch["source"]))]
        return {k: [r[k] for r in rows] for k in rows[0]}


def _plain(row: dict) -> dict:
    """Ray rows carry numpy scalars: back to Python values."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _run_local(cfg: RestoreConfig, todo: list[dict], progress: Progress) -> Iterator[dict]:
    device = _device(cfg)
    restorer = load_restorer(cfg, device)
    for item in todo:
        yield restore_video(item["source"], item["output"], restorer, cfg, relpath=item["relpath"],
                            source_size=item["source_size"], device=device, progress=progress)


def _ensure_ray(cfg: RestoreConfig):
    import ray

    if not ray.is_initialized():
        env = storage.worker_env()
        if not (cfg.ray_address or os.environ.get("RAY_ADDRESS")):     # a local Ray: workers import from here
            env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
        ray.init(address=cfg.ray_address or None, runtime_env={"env_vars": env}, log_to_driver=True)
    return ray


def _run_ray(cfg: RestoreConfig, todo: list[dict], progress_actor) -> Iterator[dict]:
    """Ray Data: one block per video, at most one in flight per actor (no queue behind a long
    video). An actor that dies (OOM kill, segfault) is restarted and its video retried
    `max_retries` times; a video that still kills it gets a `failed` row (error_kind
    "crash") instead of failing the job."""
    ray = _ensure_ray(cfg)
    ctx = ray.data.DataContext.get_current()
    saved, ctx.max_errored_blocks = ctx.max_errored_blocks, len(todo)   # a crashed video: a row, not fatal
    ds = ray.data.from_items(todo, override_num_blocks=len(todo))
    ds = ds.map_batches(RestoreWorker, fn_constructor_kwargs={"cfg": cfg, "progress": progress_actor},
                        batch_size=1, num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus or None,
                        compute=ray.data.ActorPoolStrategy(size=min(cfg.concurrency, len(todo)),
                                                           max_tasks_in_flight_per_actor=1),
                        # By default Ray Data retries a task forever: a video that kills its actor
                        # would loop. (Ray 2.60 warns that these remote args go in 2.64; its
                        # `ray_remote_args_fn` alternative is deprecated too.)
                        max_restarts=-1, max_task_retries=cfg.max_retries)
    seen = set()
    try:
        for row in ds.iter_rows():
            seen.add(row["source"])
            yield _plain(row)
    finally:
        ctx.max_errored_blocks = saved
    for item in todo:
        if item["source"] not in seen:
            row = empty_row(item["source"], item["output"], item["relpath"], item["source_size"], cfg.model)
            row.update(error=f"the worker died restoring this video ({cfg.max_retries + 1} attempts)",
                       error_kind="crash", finished_at=_now(), worker="")
            yield row


def _check_model(cfg: RestoreConfig) -> None:
    if cfg.model != "bicubic" and not storage.exists(storage.join(cfg.model, "unet", "config.json")):
        raise ValueError(f"--model {cfg.model}: not an upscaler directory (no unet/config.json); "
                         "or use --model bicubic")


def restore_archive(cfg: RestoreConfig) -> dict:
    """Restore every video under cfg.src that has no complete output under cfg.dst; see module doc."""
    t0 = time.time()
    murl = manifest_url(cfg)
    rows = read_manifest(murl)
    todo, skipped = plan(cfg, rows)
    recovered = [u for u, r in skipped.items() if rows.get(u) is not r]   # from markers: no row yet
    rows.update(skipped)
    print(f"[restore] {len(todo) + len(skipped)} videos under {cfg.src}: {len(todo)} to restore, "
          f"{len(skipped)} skipped (complete, or unreadable and unchanged)", flush=True)
    done_now: list[dict] = []
    try:
        if todo:
            _run(cfg, todo, murl, rows, done_now)
    finally:                              # also after an interrupted run: keep what finished
        if done_now or recovered:
            write_manifest(murl, rows)
    summary = _summary(cfg, murl, done_now, skipped, time.time() - t0)
    print(f"[restore] summary: {json.dumps({k: v for k, v in summary.items() if k != 'rows'})}", flush=True)
    return summary


def _run(cfg: RestoreConfig, todo: list[dict], murl: str, rows: dict[str, dict], done_now: list[dict]) -> None:
    """Restore `todo` (Ray Data actors or in-process), recording rows as videos finish."""
    _check_model(cfg)
    actor = None
    if cfg.ray:
        ray = _ensure_ray(cfg)
        actor = ray.remote(Progress).options(num_cpus=0).remote(len(todo))
        snapshot, runner = (lambda: ray.get(actor.snapshot.remote())), _run_ray(cfg, todo, actor)
    else:
        local = Progress(len(todo))
        snapshot, runner = local.snapshot, _run_local(cfg, todo, local)
    last_checkpoint = time.time()
    try:
        with _printing(snapshot, cfg.progress_every_s):
            for row in runner:
                rows[row["source"]] = row
                done_now.append(row)
                _print_row(row)
                if time.time() - last_checkpoint > cfg.manifest_every_s:
                    write_manifest(murl, rows)
                    last_checkpoint = time.time()
        print(progress_line(snapshot()), flush=True)
    finally:
        if actor is not None:
            ray.kill(actor)


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
