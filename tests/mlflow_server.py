"""A real MLflow tracking server for tests, plus tiny policies to evaluate and register.

``MlflowServer`` runs ``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts under a
test folder) in its own process group, lean (one worker, no job runner), and stops it with a
signal to the group. ``rest`` reads the server through its plain REST API, as a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true", "TMPDIR": str(self.root)}
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        cmd = [str(mlflow_bin), "server", "--workers", "1", "--host", "127.0.0.1",
               "--port", str(self.port), "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.root / "artifacts")]
        self.log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout}s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # Wait until the port is free again, so a restart on it works.
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) != 0:
                    break
            time.sleep(0.1)
        self.proc = None
        self.log.close()

    def tail(self, n: int = 40) -> str:
        path = self.root / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    def rest(self, endpoint: str, **params) -> dict:
        """GET /api/2.0/mlflow/<endpoint>?params as JSON; HTTP errors return their JSON body
        with the status under '_status'."""
        url = f"{self.uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
            return {**body, "_status": e.code}


def build_policies(root: Path) -> dict[str, Path]:
    """Tiny llama policies: 'ref' (random init), 'good' (final norm zeroed: every logit 0, so
    greedy decoding emits the pad token and the response is empty, the most concise possible),
    'bad' (ref plus weight noise: random, long responses)."""
    import torch
    from transformers import AutoModelForCausalLM

    from fgpo_tasks.models import build_tiny

    root = Path(root)
    ref = build_tiny("tiny-llama", root / "ref", seed=0)
    out = {"ref": ref}
    for name in ("good", "bad"):
        path = root / name
        if not path.exists():
            shutil.copytree(ref, path)
            model = AutoModelForCausalLM.from_pretrained(path)
            torch.manual_seed(1)
            with torch.no_grad():
                if name == "good":
                    model.model.norm.weight.zero_()
                else:
                    for p in model.parameters():
                        p.add_(0.5 * torch.randn_like(p))
            model.save_pretrained(path)
        out[name] = path
    return out
