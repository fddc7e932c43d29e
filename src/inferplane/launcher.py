"""Starting and stopping real processes: emulated replicas and gateways.

Used by ``inferplane up``, the benchmarks and the integration tests, so all of
them run the very processes a user runs. On Linux a child dies with its
parent (``PR_SET_PDEATHSIG``), so a killed ``up`` leaves no orphans.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from inferplane.config import Backend, Config, EngineKind

__all__ = [
    "Child",
    "LaunchError",
    "emulated_backends",
    "emulator_command",
    "ensure_ports_free",
    "free_port",
    "start",
    "stop_all",
    "wait_healthy",
]


class LaunchError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path | None = field(default=None)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait()


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out; free unless someone takes it before we bind."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def ensure_ports_free(config: Config) -> None:
    """Before ``up`` starts anything: the gateway's and every emulated replica's port must be
    free, or LaunchError says which one is taken."""
    wanted = [(config.gateway.host, config.gateway.port, "gateway")]
    for backend, _ in emulated_backends(config):
        parts = urlsplit(backend.url)
        wanted.append(
            (parts.hostname or "127.0.0.1", parts.port or 80, f"emulated replica {backend.label}")
        )
    for host, port, what in wanted:
        with socket.socket() as s:
            # As the servers do: a port left in TIME_WAIT by a past run is free to them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                raise LaunchError(f"{host}:{port} ({what}) is not free: {exc.strerror}") from None


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def emulator_command(backend: Backend, catalogue_model: str) -> list[str]:
    parts = urlsplit(backend.url)
    assert backend.gpu is not None
    return [
        sys.executable,
        "-m",
        "inferplane",
        "engine",
        "emulate",
        "--gpu",
        backend.gpu,
        "--model",
        catalogue_model,
        "--served-model-name",
        backend.model or catalogue_model,
        "--tp",
        str(backend.tp),
        "--host",
        parts.hostname or "127.0.0.1",
        "--port",
        str(parts.port or 80),
        "--time-scale",
        str(backend.time_scale),
    ]


def start(
    name: str,
    url: str,
    argv: Sequence[str],
    *,
    log_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> Child:
    """Start ``argv``; its output goes to ``log_dir/name.log`` (or is inherited)."""
    log_path = None
    out = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        out = log_path.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdout=out,
        stderr=subprocess.STDOUT if out else None,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
        env={**os.environ, **(env or {})},
    )
    if out is not None:
        out.close()
    return Child(name, url, process, log_path)


def emulated_backends(config: Config) -> list[tuple[Backend, str]]:
    """The backends ``up`` must start itself, with the catalogue model each runs."""
    found = []
    for name, model in config.models.items():
        for backend in model.backends:
            if backend.engine is EngineKind.EMULATED:
                found.append((backend, model.catalogue or name))
    return found


def wait_healthy(children: Sequence[Child], timeout_s: float = 30.0) -> None:
    """Block until every child answers ``GET /health`` with 200, or raise LaunchError."""
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    while pending:
        child = pending[0]
        if child.process.poll() is not None:
            hint = f"; see {child.log_path}" if child.log_path else ""
            raise LaunchError(f"{child.name} exited with status {child.process.returncode}{hint}")
        try:
            with urllib.request.urlopen(child.url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    pending.pop(0)
                    continue
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise LaunchError(f"{child.name} at {child.url} not healthy after {timeout_s:.0f}s")
        time.sleep(0.05)


def stop_all(children: Sequence[Child], grace_s: float = 5.0) -> None:
    """SIGTERM everyone, then SIGKILL whoever is still there after ``grace_s``."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
