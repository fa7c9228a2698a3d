"""A WebDataset tar shard built in memory, with deterministic member metadata (fixed mtime and
mode), so that the same clips always give the same bytes."""
from __future__ import annotations

import io
import tarfile


class TarShard:
    """An in-memory tar with deterministic member metadata (same clips -> same bytes)."""

    def __init__(self):
        self.buffer = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buffer, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in close()
        self.clips = 0

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def size(self) -> int:
        return self.buffer.tell()

    def close(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()
