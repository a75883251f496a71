"""Runs the runtime adapter as a child process on a Unix socket: the isolated
mode (`mmesh up --runtime uds`, and the tests of that mode)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mesh.processes import stop_process


@dataclass
class AdapterProcess:
    socket_path: Path
    capacity_bytes: int = 0
    device: str = "auto"
    log_level: str = "WARNING"
    models_dir: Path | None = None  # pulled-model cache; default: beside the socket
    extra_args: tuple[str, ...] = ()  # e.g. ("--runtime", "mlserver", "--runtime-endpoint", ...)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def target(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self, timeout_s: float = 30.0) -> "AdapterProcess":
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "runtime_adapter",
            "--listen", self.target,
            "--device", self.device,
            "--log-level", self.log_level,
        ]
        cmd += ["--models-dir", str(self.models_dir or self.socket_path.with_suffix(".models"))]
        if self.capacity_bytes:
            cmd += ["--capacity-bytes", str(self.capacity_bytes)]
        cmd += self.extra_args
        self._proc = subprocess.Popen(cmd, start_new_session=True)  # stopped by us, not by Ctrl-C
        deadline = time.monotonic() + timeout_s
        while not self.socket_path.exists():
            if self._proc.poll() is not None:
                raise RuntimeError(f"runtime adapter exited with {self._proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"runtime adapter did not open {self.socket_path} in {timeout_s}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout_s)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None
