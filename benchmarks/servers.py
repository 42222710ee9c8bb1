"""Start a server under test as a real uvicorn process on a free loopback port, and stop it.

Every wait is bounded: a server that is not ready in time, or that dies, raises with the tail
of its log so the reason is visible in the benchmark's output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A server under test did not start or died; the message carries its log tail."""


@dataclass(frozen=True)
class ServerSpec:
    name: str
    argv: list[str]  # `{port}` is replaced by the chosen port
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningServer:
    url: str
    pid: int


def spul_server(
    model: Path, store: Path, *, env: dict[str, str] | None = None, name: str = "spul"
) -> ServerSpec:
    """`spul serve` on the model and store, with extra SPUL_* settings in `env`."""
    argv = [
        sys.executable,
        "-m",
        "spul",
        "serve",
        "--host",
        HOST,
        "--port",
        "{port}",
        "--model",
        str(model),
        "--store",
        str(store),
    ]
    return ServerSpec(name, argv, env or {})


def bare_server(model: Path, store: Path, *, env: dict[str, str] | None = None) -> ServerSpec:
    """`spul serve`'s app plus the benchmark-only zero-length profile (bare_server.py)."""
    settings = {"SPUL_MODEL": str(model), "SPUL_STORE": str(store)}
    return ServerSpec("no_profile", _uvicorn("spul.benchmarks.bare_server:create_app"), {**(env or {}), **settings})


def naive_server(model: Path, store: Path, *, env: dict[str, str] | None = None) -> ServerSpec:
    settings = {"SPUL_NAIVE_MODEL": str(model), "SPUL_NAIVE_STORE": str(store)}
    return ServerSpec("naive", _uvicorn("spul.benchmarks.naive_server:create_app"), {**(env or {}), **settings})


def cb_server(model: Path, *, env: dict[str, str] | None = None) -> ServerSpec:
    """transformers' continuous batching on the bare model (cb_server.py); `SPUL_CB_*` settings in `env`."""
    return ServerSpec(
        "transformers_cb", _uvicorn("spul.benchmarks.cb_server:create_app"), {**(env or {}), "SPUL_CB_MODEL": str(model)}
    )


def _uvicorn(factory: str) -> list[str]:
    return [sys.executable, "-m", "uvicorn", factory, "--factory", "--host", HOST, "--port", "{port}",
            "--log-level", "warning"]


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment that caps a server's torch/OpenMP threads (on a shared machine, fewer threads
    than cores avoids OpenMP spin-waiting against other processes); {} leaves the default."""
    if threads is None:
        return {}
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running(spec: ServerSpec, *, log_path: Path, ready_timeout_s: float = 900.0) -> Iterator[RunningServer]:
    """Yield a ready server (URL and pid); always stop it (SIGINT, then SIGKILL) on exit."""
    with running_all([(spec, log_path)], ready_timeout_s=ready_timeout_s) as (server,):
        yield server


@contextlib.contextmanager
def running_all(
    specs: list[tuple[ServerSpec, Path]], *, ready_timeout_s: float = 900.0
) -> Iterator[list[RunningServer]]:
    """Start every server at once (their model loads overlap), yield them once all are ready, in
    order; always stop every one of them on exit."""
    procs: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        for spec, log_path in specs:
            port = free_port()
            argv = [a.replace("{port}", str(port)) for a in spec.argv]
            env = {**os.environ, **spec.env, "PYTHONPATH": _pythonpath()}
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "wb") as log_file:  # the child keeps its own copy of the descriptor
                proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
            procs.append((proc, f"http://{HOST}:{port}", log_path))
        deadline = time.monotonic() + ready_timeout_s
        for proc, url, log_path in procs:
            _wait_ready(proc, url, log_path, max(1.0, deadline - time.monotonic()))
        yield [RunningServer(url, proc.pid) for proc, url, _ in procs]
    finally:
        for proc, _, _ in procs:
            stop(proc)


def stop(proc: subprocess.Popen, *, grace_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace_s)


def server_pid_rss(pid: int) -> int:
    """Resident set size of a process in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ServerError(f"no VmRSS for pid {pid}")


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"server exited with code {proc.returncode} before ready:\n{_tail(log_path)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.25)
    raise ServerError(f"server not ready at {url}/readyz after {timeout_s:.0f}s:\n{_tail(log_path)}")


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_bytes()[-n:].decode(errors="replace")


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{REPO_ROOT}{os.pathsep}{existing}" if existing else str(REPO_ROOT)
