"""Real server processes on loopback for the fault tests: start, wait ready, SIGKILL, stop.

Servers are `spul serve` (``spul.cli.main(["serve", ...])``) in child processes forked from a
multiprocessing *forkserver* that has already imported torch, transformers and the service: a
child is a separate OS process (own pid, own memory, killable with SIGKILL) that is ready in
about a second instead of paying the ~15 s import cost of a fresh interpreter on every start.
Every wait is bounded; a server that dies or never gets ready fails the test with its log tail.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from support.server import ADMIN_TOKEN

HOST = "127.0.0.1"
_PRELOAD = [
    "torch",
    "transformers",
    "transformers.models.llama.modeling_llama",
    "fastapi",
    "uvicorn",
    "safetensors.torch",
    "spul.prompts_store",
    "spul.service.app",
    "spul.cli",
    "spul.commands.serve",
]

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(_PRELOAD)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def admin_headers(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def start_child(target: Callable[..., None], *args: object) -> multiprocessing.process.BaseProcess:
    """Run a module-level function in a fresh child of the preloaded forkserver."""
    proc = CTX.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _serve(argv: list[str], env: dict[str, str], log_path: str) -> None:
    """Child entry point: stdout/stderr to the log, SPUL_* settings from `env`, then `spul serve`."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    for key in [k for k in os.environ if k.startswith("SPUL_")]:
        del os.environ[key]
    os.environ.update(env)
    import torch

    torch.set_num_threads(1)  # several servers share two busy cores
    from spul.cli import main

    sys.exit(main(argv))


class ServerProcess:
    """One `spul serve` process; `settings` become SPUL_<NAME> environment variables."""

    def __init__(self, model: Path, store: Path, log_path: Path, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self.store = store
        env = {f"SPUL_{k.upper()}": str(v) for k, v in settings.items()}
        env.setdefault("SPUL_ADMIN_TOKEN", ADMIN_TOKEN)
        argv = [
            "serve",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--model",
            str(model),
            "--store",
            str(store),
        ]
        self.proc = start_child(_serve, argv, env, str(log_path))

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.is_alive()

    def wait_ready(self, timeout_s: float = 90.0) -> ServerProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"server exited ({self.proc.exitcode}) before ready:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=2.0).status_code == 200:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def kill9(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.join(timeout=30)

    def stop(self, grace_s: float = 15.0) -> None:
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)  # uvicorn's graceful shutdown
        self.proc.join(timeout=grace_s)
        self.kill9()

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace") if self.log_path.exists() else ""
