"""Draw the parameters of the chain from a config and a numpy Generator -> JSON records.

A record is the whole program for one clip: its sizes, an ordered list of tensor ops, and
an optional codec step. `chain.apply_records` executes it; nothing random happens there
except noise, whose seed is in the record.

Which ops run, and the sizes of the resizes, are drawn once per batch (as Real-ESRGAN
does per batch) so that a batch keeps one shape through the chain; every magnitude (kernel,
noise level and seed, JPEG quality, codec and rate) is drawn per clip, once, and shared by
all its frames, with RealBasicVSR's small per-frame drift when `config.drift` is on.
"""
from __future__ import annotations

import math

import numpy as np

from degrade.config import (
    BlurConfig,
    CodecConfig,
    DegradeConfig,
    JpegConfig,
    NoiseConfig,
    ResizeConfig,
)

FORMAT = "d2vr.degrade/1"


def _u(rng: np.random.Generator, lo_hi) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def _choice(rng: np.random.Generator, items, probs=None):
    if probs is None:
        return items[int(rng.integers(len(items)))]
    p = np.asarray(probs, dtype=np.float64)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def drift(v0: float, step: float, lo: float | None, hi: float | None, frames: int,
          rng: np.random.Generator, enabled: bool) -> list[float]:
    """Per-frame values v0 + t * d, d ~ U(-step, step) once per clip, clipped to [lo, hi]."""
    d = float(rng.uniform(-step, step)) if enabled and step > 0 else 0.0
    vals = np.array([v0 + t * d for t in range(frames)], dtype=np.float64)
    if lo is not None:
        vals = np.clip(vals, lo, hi)
    return [float(v) for v in vals]


def sample_blur(bc: BlurConfig, frames: int, rng, on: bool) -> dict:
    size = int(_choice(rng, bc.sizes))
    if rng.uniform() < bc.sinc_prob:
        lo = math.pi / 3 if size < 13 else math.pi / 5   # [ESRGAN]: small kernels, milder ringing
        omega = drift(_u(rng, (lo, math.pi)), bc.omega_step, lo, math.pi, frames, rng, on)
        return {"op": "blur", "type": "sinc", "size": size, "omega": omega}
    kind = _choice(rng, bc.types, bc.type_probs)
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sx = drift(_u(rng, bc.sigma), bc.sigma_step, *bc.sigma, frames, rng, on)
    sy = sx if iso else drift(_u(rng, bc.sigma), bc.sigma_step, *bc.sigma, frames, rng, on)
    theta = [0.0] * frames if iso else drift(_u(rng, (-math.pi, math.pi)), bc.angle_step, None, None,
                                             frames, rng, on)
    rec = {"op": "blur", "type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind.startswith(("generalized", "plateau")):
        lo, hi = bc.beta_gaussian if kind.startswith("generalized") else bc.beta_plateau
        # [ESRGAN]: beta < 1 (heavy tails) or beta > 1 (light tails), each half the time.
        b0 = _u(rng, (lo, 1.0)) if (rng.uniform() < 0.5 and lo < 1.0) else _u(rng, (max(lo, 1.0), hi))
        step = bc.beta_step if kind.startswith("generalized") else 2 * bc.beta_step
        rec["beta"] = drift(b0, step, lo, hi, frames, rng, on)
    return rec


def sample_noise(nc: NoiseConfig, frames: int, rng, on: bool) -> dict:
    gray = bool(rng.uniform() < nc.gray_prob)
    seed = int(rng.integers(2**31 - 1))
    if rng.uniform() < nc.gaussian_prob:
        sigma = drift(_u(rng, nc.sigma), nc.sigma_step, *nc.sigma, frames, rng, on)
        return {"op": "noise", "kind": "gaussian", "gray": gray, "sigma": sigma, "seed": seed}
    scale = drift(_u(rng, nc.poisson_scale), nc.poisson_step, *nc.poisson_scale, frames, rng, on)
    return {"op": "noise", "kind": "poisson", "gray": gray, "scale": scale, "seed": seed}


def sample_jpeg(jc: JpegConfig, frames: int, rng, on: bool) -> dict:
    q = drift(_u(rng, jc.quality), jc.quality_step, *jc.quality, frames, rng, on)
    return {"op": "jpeg", "quality": [round(v) for v in q]}


def _resize_factor(rc: ResizeConfig, rng) -> float:
    kind = _choice(rng, ("up", "down", "keep"), rc.probs)
    if kind == "up":
        return _u(rng, (1.0, rc.range[1]))
    if kind == "down":
        return _u(rng, (rc.range[0], 1.0))
    return 1.0


def min_side(config: DegradeConfig) -> dict:
    """Smallest side (px) each blur needs: reflect padding by k // 2 needs k // 2 + 1 px."""
    def need(stage):
        bc = stage.blur
        return max(bc.sizes) // 2 + 1 if stage.enabled and bc.prob > 0 else 1
    return {"stage1": need(config.stage1), "stage2": need(config.stage2),
            "final": max(config.final.sinc_sizes) // 2 + 1 if config.final.sinc_prob > 0 else 1}


def check_size(config: DegradeConfig, height: int, width: int, what: str = "hq") -> None:
    """Raise ValueError when a frame is too small for the blurs this config can draw."""
    s = config.scale
    if height < s or width < s:
        raise ValueError(f"{what}: frame {height}x{width} is smaller than the scale factor {s}")
    need = min_side(config)
    first = max(need["stage1"], need["stage2"])
    if min(height // s * s, width // s * s) < first:
        raise ValueError(f"{what}: frame {height}x{width} is too small for the blur kernels of preset "
                         f"{config.name!r} (up to {2 * first - 1}x{2 * first - 1}; reflect padding needs "
                         f"at least {first} px per side)")
    lq = min(height // s, width // s)
    if lq < need["final"]:
        raise ValueError(f"{what}: low-resolution frame {height // s}x{width // s} (scale {s}) is too small "
                         f"for the final sinc filter of preset {config.name!r} (needs at least "
                         f"{need['final']} px per side)")


def _stage_ops(stage, name: str, clips: int, frames: int, size: tuple[int, int], resize_ref: tuple[int, int],
               min_next: int, rng, on: bool) -> tuple[list[list[dict]], tuple[int, int]]:
    """Ops of one order for each clip; structure (which ops, resize size) shared by the batch."""
    ops: list[list[dict]] = [[] for _ in range(clips)]
    if not stage.enabled:
        return ops, size
    if rng.uniform() < stage.blur.prob:
        for c in range(clips):
            ops[c].append({**sample_blur(stage.blur, frames, rng, on), "stage": name})
    factor = _resize_factor(stage.resize, rng)
    mode = _choice(rng, stage.resize.modes)
    new = tuple(max(min_next, 1, round(r * factor)) for r in resize_ref)
    if new != tuple(size):
        for c in range(clips):
            ops[c].append({"op": "resize", "size": list(new), "mode": mode, "factor": factor, "stage": name})
        size = new
    if rng.uniform() < stage.noise.prob:
        for c in range(clips):
            ops[c].append({**sample_noise(stage.noise, frames, rng, on), "stage": name})
    if rng.uniform() < stage.jpeg.prob:
        for c in range(clips):
            ops[c].append({**sample_jpeg(stage.jpeg, frames, rng, on), "stage": name})
    return ops, size


def sample_codec(cc: CodecConfig, lq_size: tuple[int, int], rng) -> dict | None:
    if not rng.uniform() < cc.prob:
        return None
    codec = _choice(rng, cc.codecs, cc.codec_probs)
    rec = {"codec": codec, "fps": int(cc.fps), "preset": cc.preset}
    if rng.uniform() < cc.bitrate_prob:
        pixels = lq_size[0] * lq_size[1] / (64 * 64)   # bitrate range is for 64x64 [RBVSR]
        # libx264 refuses to open below a few kbit/s (seen at 16x16 LQ): keep a floor.
        rec["bitrate"] = max(4000, round(_u(rng, cc.bitrate) * pixels))
    elif codec == "mpeg4":
        rec["qscale"] = int(rng.integers(cc.qscale[0], cc.qscale[1] + 1))
    else:
        rec["crf"] = int(rng.integers(cc.crf[0], cc.crf[1] + 1))
    return rec


def sample_records(config: DegradeConfig, clips: int, frames: int, height: int, width: int,
                   rng: np.random.Generator) -> list[dict]:
    """One JSON record per clip for a batch of `clips` clips of (frames, 3, height, width)."""
    check_size(config, height, width)
    s, on = config.scale, config.drift
    crop = (height // s * s, width // s * s)
    lq = (height // s, width // s)
    need = min_side(config)
    ops1, size = _stage_ops(config.stage1, "stage1", clips, frames, crop, crop, need["stage2"], rng, on)
    ops2, size = _stage_ops(config.stage2, "stage2", clips, frames, size, lq, 1, rng, on)
    fc = config.final
    resize_first = bool(rng.uniform() < fc.resize_first_prob)
    mode = _choice(rng, fc.resize_modes)
    with_sinc = bool(rng.uniform() < fc.sinc_prob)
    with_jpeg = bool(rng.uniform() < fc.jpeg.prob)
    records = []
    for c in range(clips):
        resize = [{"op": "resize", "size": list(lq), "mode": mode, "stage": "final"}] if size != lq else []
        if with_sinc:
            size_k = int(_choice(rng, fc.sinc_sizes))
            omega = drift(_u(rng, fc.sinc_omega), fc.omega_step, *fc.sinc_omega, frames, rng, on)
            resize.append({"op": "blur", "type": "sinc", "size": size_k, "omega": omega, "stage": "final"})
        jpeg = [{**sample_jpeg(fc.jpeg, frames, rng, on), "stage": "final"}] if with_jpeg else []
        final = resize + jpeg if resize_first else jpeg + resize
        records.append({
            "format": FORMAT, "preset": config.name, "scale": s, "frames": frames,
            "input_size": [height, width], "crop_size": list(crop), "lq_size": list(lq),
            "ops": ops1[c] + ops2[c] + final + [{"op": "quantize", "stage": "final"}],
            "codec": None,
        })
    for rec in records:  # drawn after the tensor ops so the codec switch leaves them unchanged
        rec["codec"] = sample_codec(config.codec, lq, rng)
    return records
