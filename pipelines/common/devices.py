"""Torch dtypes by name: the one parser of `--dtype`-style flags."""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """The dtype `name` (see DTYPES); "auto" (only with a device) = bf16 on cuda, float32 elsewhere."""
    if name == "auto" and device is not None:
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]
