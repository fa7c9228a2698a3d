"""Start and stop a separate Ray cluster (`ray start --head`) for one test module.

`ray stop` stops every Ray on the machine, so we never call it: each cluster gets its
own short temp dir, and stopping kills exactly the processes whose command line names
that dir (head, autoscaler, fake worker nodes, workers).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.ports import free_ports

RAY = str(Path(sys.executable).parent / "ray")


class LocalCluster:
    def __init__(self, num_cpus: int = 2, autoscaling_config: str | None = None, env: dict | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")  # short: socket paths have a length limit
        self._choose_ports()
        self.num_cpus = num_cpus
        self.autoscaling_config = autoscaling_config
        # Ray 2.60 turns token auth on for `ray start --head`: use it, with a token of
        # this cluster's own, given to every client through the environment.
        self.token = secrets.token_hex(16)
        # Job entrypoints say `python`: the cluster's own (this venv's) must come first.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    **(env or {})}

    def _choose_ports(self) -> None:
        (self.port, self.dashboard_port, self.agent_http_port, self.agent_grpc_port,
         self.metrics_port, self.runtime_env_port) = free_ports(6)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> "LocalCluster":
        """`ray start --head`. A port chosen free can be taken by another process before
        Ray binds it; such a failure gets one more try with fresh ports."""
        for attempt in (1, 2):
            out = self._ray_start()
            if out.returncode == 0:
                return self
            self.stop()
            if attempt == 1 and "port" in (out.stdout + out.stderr).lower():
                self._choose_ports()
                continue
            raise RuntimeError(f"ray start failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    def _ray_start(self) -> subprocess.CompletedProcess:
        cmd = [RAY, "start", "--head", f"--port={self.port}", f"--num-cpus={self.num_cpus}",
               f"--temp-dir={self.temp_dir}", "--include-dashboard=true",
               "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}",
               f"--dashboard-agent-listen-port={self.agent_http_port}",
               f"--dashboard-agent-grpc-port={self.agent_grpc_port}",
               f"--metrics-export-port={self.metrics_port}", f"--runtime-env-agent-port={self.runtime_env_port}",
               "--disable-usage-stats"]
        if self.autoscaling_config:
            cmd.append(f"--autoscaling-config={self.autoscaling_config}")
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)

    def run(self, args: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
        """Run a command against this cluster (RAY_ADDRESS set)."""
        env = {**self.env, "RAY_ADDRESS": self.address, **kwargs.pop("env", {})}
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)

    def pids(self) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
                environ = open(f"/proc/{entry}/environ", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if self.temp_dir in cmdline or f"RAY_AUTH_TOKEN={self.token}" in environ:
                found.append(int(entry))
        return [p for p in found if p != os.getpid()]

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + 10
            while pids and time.time() < deadline and self.pids():
                time.sleep(0.2)

    def submit(self, entrypoint: list[str], timeout: float = 600, working_dir: str = ".",
               extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """`ray job submit --working-dir . -- <entrypoint>` and wait for the job.

        Right after `ray start` the job agent may not be up yet ("No available agent"):
        that one error is retried for a minute."""
        args = [RAY, "job", "submit", "--address", self.dashboard_url, "--working-dir", working_dir]
        if extra_env:
            import json

            args += ["--runtime-env-json", json.dumps({"env_vars": extra_env})]
        args += ["--", *entrypoint]
        deadline = time.time() + 60
        while True:
            out = self.run(args, timeout=timeout)
            if "No available agent" not in out.stderr or time.time() > deadline:
                return out
            time.sleep(2)
