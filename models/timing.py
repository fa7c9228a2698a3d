"""Wall-clock seconds per named section (the one section timer: the upscaler's flow / unet /
vae, restoration's decode / shots / restore / encode / io)."""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch


class SectionTimer:
    """`with timer.section(name, device):` adds the section's seconds to `seconds[name]` and
    counts it in `calls[name]`; on a CUDA device it syncs around the section, so that the time
    is the device's, not the launch's."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def section(self, name: str, device: torch.device | None = None):
        sync = device is not None and device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(device)
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def reset(self):
        self.seconds.clear()
        self.calls.clear()
