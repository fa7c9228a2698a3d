"""Run the degradation chain: sample records, apply them to clips, replay a record.

Size rule: a clip (T, 3, H, W) is first cropped at the bottom/right to a multiple of the
scale s, (H // s * s, W // s * s), so each LQ pixel covers exactly an s x s block of the
cropped HQ (the ground truth for training is that crop: `crop_to_scale`). The LQ is then
exactly (H // s, W // s).

All tensor stages run on the input's device in float32; resizes and JPEG process the whole
batch at once, blur and noise one clip at a time (each clip has its own kernel size and
noise generator). The codec stage runs per clip on CPU. Replaying a record on the same
device and thread settings gives bit-identical output.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from degrade import codec, ops
from degrade.config import DegradeConfig
from degrade.jpeg import jpeg
from degrade.sampling import FORMAT, sample_records


def crop_to_scale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop (..., H, W) at the bottom/right to (H // s * s, W // s * s)."""
    h, w = x.shape[-2:]
    return x[..., : h // scale * scale, : w // scale * scale]


def _check_tensor(x, rank: int, name: str) -> None:
    shape = "(B, T, C, H, W)" if rank == 5 else "(T, C, H, W)"
    if not torch.is_tensor(x):
        raise ValueError(f"{name}: expected a torch tensor {shape}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor in [0, 1], got dtype {x.dtype}")
    if x.ndim != rank:
        raise ValueError(f"{name}: expected rank {rank} {shape}, got shape {tuple(x.shape)}")
    if x.shape[-3] != 3:
        raise ValueError(f"{name}: expected 3 (RGB) channels, got {x.shape[-3]} in shape {tuple(x.shape)}")
    if 0 in x.shape:
        raise ValueError(f"{name}: empty tensor {tuple(x.shape)}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{lo:.3g}, {hi:.3g}]")


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ValueError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}")


Capture = Callable[[str, torch.Tensor], None]


def apply_records(x: torch.Tensor, records: list[dict], capture: Capture | None = None) -> torch.Tensor:
    """Apply one record per clip to x (B, T, 3, H, W) on its device -> (B, T, 3, h, w).

    The records must share their op structure (those from one `sample_records` call do).
    `capture(stage, x)` is called with the batch after each stage (for previews).
    """
    b, t = x.shape[:2]
    if len(records) != b:
        raise ValueError(f"{b} clips but {len(records)} records")
    for rec in records:
        if rec.get("format") != FORMAT:
            raise ValueError(f"not a degradation record (format {rec.get('format')!r}, expected {FORMAT!r})")
        if rec["frames"] != t or list(x.shape[-2:]) != list(rec["input_size"]):
            raise ValueError(f"record is for {rec['frames']} frames of {rec['input_size']}, "
                             f"got clip of {t} frames of {list(x.shape[-2:])}")
    s = records[0]["scale"]
    x = crop_to_scale(x.to(torch.float32), s)
    all_ops = [rec["ops"] for rec in records]
    if len({len(o) for o in all_ops}) != 1:
        raise ValueError("records of one batch must have the same op structure")
    for i, step in enumerate(zip(*all_ops)):
        kind = step[0]["op"]
        if any(o["op"] != kind for o in step):
            raise ValueError(f"records disagree on op {i}: {[o['op'] for o in step]}")
        if kind == "blur":
            x = torch.stack([ops.blur(x[c], step[c]) for c in range(b)])
        elif kind == "noise":
            x = torch.stack([ops.noise(x[c], step[c]) for c in range(b)])
        elif kind == "resize":
            if any(o["size"] != step[0]["size"] or o["mode"] != step[0]["mode"] for o in step):
                raise ValueError(f"records disagree on resize op {i}")
            flat = ops.resize(x.flatten(0, 1), tuple(step[0]["size"]), step[0]["mode"])
            x = flat.unflatten(0, (b, t))
        elif kind == "jpeg":
            q = torch.tensor([v for o in step for v in o["quality"]], device=x.device)
            x = jpeg(x.flatten(0, 1).clamp(0, 1), q).unflatten(0, (b, t))
        elif kind == "quantize":
            x = ops.quantize(x)
        else:
            raise ValueError(f"unknown op {kind!r} in record")
        if capture is not None and (i + 1 == len(all_ops[0]) or all_ops[0][i + 1]["stage"] != step[0]["stage"]):
            capture(step[0]["stage"], x)
    if any(rec.get("codec") for rec in records):
        x = torch.stack([codec.roundtrip(x[c], rec["codec"]) if rec.get("codec") else x[c]
                         for c, rec in enumerate(records)])
        if capture is not None:
            capture("codec", x)
    return x


def degrade_batch(hq: torch.Tensor, config: DegradeConfig, rng, capture: Capture | None = None
                  ) -> tuple[torch.Tensor, list[dict]]:
    """Degrade a batch (B, T, 3, H, W) in [0, 1] -> (LQ (B, T, 3, H // s, W // s), records)."""
    _check_tensor(hq, 5, "degrade_batch: hq")
    if not isinstance(config, DegradeConfig):
        raise ValueError(f"config must be a DegradeConfig, got {type(config).__name__}")
    b, t, _, h, w = hq.shape
    records = sample_records(config, b, t, h, w, _rng(rng))
    return apply_records(hq, records, capture), records


def degrade_clip(hq: torch.Tensor, config: DegradeConfig, rng, capture: Capture | None = None
                 ) -> tuple[torch.Tensor, dict]:
    """Degrade one clip (T, 3, H, W) in [0, 1] -> (LQ (T, 3, H // s, W // s), record)."""
    _check_tensor(hq, 4, "degrade_clip: hq")
    lq, records = degrade_batch(hq[None], config, rng, capture)
    return lq[0], records[0]


def replay(hq: torch.Tensor, record: dict) -> torch.Tensor:
    """Apply a recorded degradation to the same clip (T, 3, H, W): bit-identical LQ."""
    _check_tensor(hq, 4, "replay: hq")
    if not isinstance(record, dict):
        raise ValueError(f"replay: record must be a dict, got {type(record).__name__}")
    return apply_records(hq[None], [record])[0]
