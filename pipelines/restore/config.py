"""The options of a restoration run (every field is a flag of jobs/restore.py)."""
from __future__ import annotations

import dataclasses

from models.color_fix import COLOR_FIXES
from models.upscaler.config import VAE_TILE_OVERLAP
from pipelines.common.cli import require
from pipelines.common.devices import DTYPES
from pipelines.common.video import VIDEO_EXTENSIONS
from pipelines.restore.tiling import TileConfig


CRF_MAX = {"libx264": 51, "libx265": 51, "h264": 51, "hevc": 51}   # else 63 (libvpx-vp9, libaom-av1)


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
    tile_halo: int = 16                    # LR px around a tile that its flow and previous-frame warp also see
    # "wavelet" or "adain": give each restored frame the colours of its input's bicubic upscale (its
    # low frequencies, or its channel mean / std; models.color_fix); "none" = the restorer's own
    color_fix: str = "none"
    # latent px: a model whose latents have a larger side VAE-decodes them in overlapping tiles
    # (a 4K output frame is 960x540 latent px; --tile restores smaller pieces anyway); 0 = never
    vae_tile: int = 512
    seed: int = 0                          # noise seed: frame t of a shot uses seed + t (= restore_clip)
    timesteps: tuple[int, ...] = ()        # student timesteps; () = the model's (the paper's 750/500/250/0)
    flow_iters: int = 0                    # flow refinement iterations; 0 = the flow net's default
    shot_threshold: float = -1.0           # shot detector threshold; < 0 = the detector's default
    min_shot_len: int = -1                 # frames; < 0 = the detector's default
    # frames: a longer video is split at shot cuts into segments of about this many (never inside
    # a shot), each restored as a task of its own on any actor, resumable, then joined; 0 = one task per video
    frames_per_task: int = 0
    batch_shots: int = 1                   # videos / segments an actor restores in lockstep (frame t of each in one UNet batch)
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
        """Every flag's range, checked before any work: a bad one is `ValueError("--flag: ...")`."""
        require(self.scale >= 1, "--scale", ">= 1", self.scale)
        require(self.concurrency >= 1, "--concurrency", ">= 1", self.concurrency)
        require(self.vae_tile == 0 or self.vae_tile > VAE_TILE_OVERLAP + 1, "--vae-tile",
                f"0 or > {VAE_TILE_OVERLAP + 1} latent px", self.vae_tile)
        require(self.frames_per_task >= 0, "--frames-per-task", ">= 0", self.frames_per_task)
        require(self.batch_shots >= 1, "--batch-shots", ">= 1", self.batch_shots)
        top = CRF_MAX.get(self.codec, 63)
        require(0 <= self.crf <= top, "--crf", f"in 0..{top} for {self.codec}", self.crf)
        require(self.num_cpus > 0, "--num-cpus", "> 0", self.num_cpus)
        require(self.num_gpus >= 0, "--num-gpus", ">= 0", self.num_gpus)
        require(self.max_retries >= 0, "--max-retries", ">= 0", self.max_retries)
        require(self.progress_every_s > 0, "--progress-every-s", "> 0 seconds", self.progress_every_s)
        require(self.manifest_every_s > 0, "--manifest-every-s", "> 0 seconds", self.manifest_every_s)
        require(self.flow_iters >= 0, "--flow-iters", ">= 0", self.flow_iters)
        require(self.color_fix in COLOR_FIXES, "--color-fix", f"one of {', '.join(COLOR_FIXES)}", self.color_fix)
        for name in ("dtype", "vae_dtype"):
            value = getattr(self, name)
            allowed = ["auto", *sorted(DTYPES)]
            require(value in allowed, "--" + name.replace("_", "-"), f"one of {', '.join(allowed)}", value)
        try:
            self.tile_config()
        except ValueError as exc:
            raise ValueError(f"--tile/--tile-overlap/--tile-margin/--tile-align/--tile-halo: {exc}") from None

    def tile_config(self) -> TileConfig:
        return TileConfig(tile=self.tile, overlap=self.tile_overlap, margin=self.tile_margin, align=self.tile_align,
                          halo=self.tile_halo)
