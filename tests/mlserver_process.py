"""A real MLServer for tests, started from its own venv (.venv-mlserver, made
by scripts/mlserver_env.sh: its pins conflict with the KServe SDK's), and
scikit-learn model files made with that venv's Python, so no model binary is
committed and the test venv needs no scikit-learn.

MLServer reads its settings from `settings.json` in the folder it is started
on, which is the adapter's `_mlserver_models` dir, exactly as the adapter's
start-up purge must leave it: loopback ports picked here, no models loaded at
start, and no parallel workers (they only slow start-up, and MLServer 1.7.1's
workers crash with uvloop >= 0.22, SeldonIO/MLServer#2286).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from mesh.etcd_process import free_port
from mesh.processes import stop_process
from runtime_adapter.external.v2_client import V2Client

VENV = Path(__file__).resolve().parent.parent / ".venv-mlserver"
MLSERVER = VENV / "bin" / "mlserver"
PYTHON = VENV / "bin" / "python"

# Four classes from two features: class = 2 * (b > 0.5) + (a > 0.5).
_TRAIN = textwrap.dedent("""
    import sys, joblib, numpy as np
    from sklearn.tree import DecisionTreeClassifier
    grid = np.array([[a, b] for a in np.linspace(0, 1, 21) for b in np.linspace(0, 1, 21)], dtype=np.float32)
    labels = 2 * (grid[:, 1] > 0.5) + (grid[:, 0] > 0.5)
    joblib.dump(DecisionTreeClassifier(random_state=0).fit(grid, labels), sys.argv[1])
""")


def available() -> bool:
    return MLSERVER.exists() and PYTHON.exists()


def make_sklearn_model(path: Path) -> Path:
    """A joblib'd DecisionTreeClassifier at `path` (see `expected_class`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(PYTHON), "-c", _TRAIN, str(path)], check=True, timeout=120)
    return path


def expected_class(a: float, b: float) -> int:
    return 2 * (b > 0.5) + (a > 0.5)


@dataclass
class MLServerProcess:
    """`mlserver start <root>`; `root` is the adapter's `_mlserver_models` dir."""

    root: Path
    log_path: Path
    grpc_port: int = 0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: object = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout_s: float = 60.0) -> "MLServerProcess":
        self.grpc_port = self.grpc_port or free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        settings = {
            "host": "127.0.0.1",
            "grpc_port": self.grpc_port,
            "http_port": free_port(),
            "metrics_port": free_port(),
            "parallel_workers": 0,
            "load_models_at_startup": False,
            "debug": False,
        }
        (self.root / "settings.json").write_text(json.dumps(settings, indent=2))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER_") and k != "VIRTUAL_ENV"}
        self._log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [str(MLSERVER), "start", str(self.root)], cwd=self.root, env=env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        client = V2Client(self.endpoint, label="mlserver")
        try:
            deadline = time.monotonic() + timeout_s
            while not client.server_ready(timeout_s=1.0):
                code = self._proc.poll()
                if code is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = self.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"MLServer not ready in {timeout_s}s (exit code {code}):\n{tail}")
                time.sleep(0.1)
        finally:
            client.close()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout_s)  # SIGTERM, then SIGKILL
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def __enter__(self) -> "MLServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
