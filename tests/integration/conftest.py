"""Real processes on loopback: emulated replicas and gateways, started as users start them."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from inferplane import launcher
from inferplane.gateway import LEDGER_FILE, hash_key
from inferplane.ledger import Database
from tests.postgres import PostgresServer

KEY = "sk-test-tenant-a"
KEY_B = "sk-test-tenant-b"
ADMIN_KEY = "sk-test-admin"
MODEL = "llama-3.1-8b"


@dataclass(frozen=True)
class Gateway:
    """A gateway process, its data dir, and the database of its ledger."""

    child: launcher.Child
    data_dir: Path
    database: Database

    @property
    def url(self) -> str:
        return self.child.url


StartEmulator = Callable[..., launcher.Child]
StartGateway = Callable[..., Gateway]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each ledger store: SQLite under the data dir (None), or a new PostgreSQL database."""
    if request.param == "sqlite":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[launcher.Child]]:
    """Every child a module starts; all stopped at the end of the module."""
    children: list[launcher.Child] = []
    yield children
    launcher.stop_all(children)


@pytest.fixture(scope="module")
def start_emulator(
    processes: list[launcher.Child], tmp_path_factory: pytest.TempPathFactory
) -> StartEmulator:
    log_dir = tmp_path_factory.mktemp("logs")

    def start(*extra: str, time_scale: float = 20.0, port: int | None = None) -> launcher.Child:
        port = port or launcher.free_port()
        argv = [
            sys.executable,
            "-m",
            "inferplane",
            "engine",
            "emulate",
            "--port",
            str(port),
            "--time-scale",
            str(time_scale),
            *extra,
        ]
        child = launcher.start(f"engine-{port}", f"http://127.0.0.1:{port}", argv, log_dir=log_dir)
        processes.append(child)
        launcher.wait_healthy([child])
        return child

    return start


@pytest.fixture(scope="module")
def start_gateway(
    processes: list[launcher.Child], tmp_path_factory: pytest.TempPathFactory
) -> StartGateway:
    """Start a gateway whose one model is served by ``backend_urls``.

    ``tenant_a`` adds YAML lines to tenant-a (budgets); ``model`` to the model (price);
    ``backend`` to each backend;
    ``top`` to the top level;
    ``gateway`` adds YAML lines to the gateway settings;
    ``data_dir`` reuses a ledger, to restart a gateway on the same state;
    ``database_url`` puts the ledger in PostgreSQL; ``port`` picks the port;
    ``read_timeout_s`` is how long a backend may stay silent.
    """
    workdir = tmp_path_factory.mktemp("gateway")

    def start(
        backend_urls: list[str],
        *,
        tenant_a: str = "",
        model: str = "",
        top: str = "",
        data_dir: Path | None = None,
        database_url: str | None = None,
        port: int | None = None,
        lease_ttl_s: float = 30.0,
        backend_cooldown_s: float = 30.0,
        outlier_errors: int = 5,
        health_check_s: float = 5.0,
        read_timeout_s: float = 3.0,
        backend: str = "",
        extra_models: str = "",
        gateway: str = "",
    ) -> Gateway:
        port = port or launcher.free_port()
        data_dir = data_dir or workdir / f"data-{port}"
        if database_url is not None:
            top += f"\ndatabase_url: {database_url}"
        database = Database(database_url or str(data_dir / LEDGER_FILE))
        extra = f"\n        {backend}" if backend else ""
        backends = "\n".join(
            f"      - url: {url}\n        engine: vllm{extra}" for url in backend_urls
        )
        config = workdir / f"gateway-{port}.yaml"
        config.write_text(
            f"""
{top}
data_dir: {data_dir}
gateway:
  port: {port}
  read_timeout_s: {read_timeout_s}
  max_body_bytes: 65536
  backend_cooldown_s: {backend_cooldown_s}
  lease_ttl_s: {lease_ttl_s}
  outlier_consecutive_errors: {outlier_errors}
  health_check_interval_s: {health_check_s}
  {gateway}
admin_key_sha256: {hash_key(ADMIN_KEY)}
models:
  {MODEL}:
    {model}
    backends:
{backends}
{extra_models}
tenants:
  tenant-a:
    keys: [{{name: a, sha256: {hash_key(KEY)}}}]
    {tenant_a}
  tenant-b:
    keys: [{{name: b, sha256: {hash_key(KEY_B)}}}]
    models: []
"""
        )
        argv = [sys.executable, "-m", "inferplane", "serve", "--config", str(config)]
        child = launcher.start(f"gateway-{port}", f"http://127.0.0.1:{port}", argv, log_dir=workdir)
        processes.append(child)
        launcher.wait_healthy([child])
        return Gateway(child, data_dir, database)

    return start


DeadUrl = Callable[[], str]


@pytest.fixture
def dead_url() -> Iterator[DeadUrl]:
    """Makes URLs that refuse connections: each port is held bound, not listening, for the
    whole test. (A port merely found free could be handed to the gateway the test starts
    next, which would then proxy to itself.)"""
    held: list[socket.socket] = []

    def make() -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    yield make
    for sock in held:
        sock.close()


_clients: list[openai.OpenAI] = []


def client(base_url: str, key: str = KEY) -> openai.OpenAI:
    """An official client with retries off, so every failure is seen as it is."""
    c = openai.OpenAI(base_url=base_url + "/v1", api_key=key, max_retries=0, timeout=15)
    _clients.append(c)
    return c


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def log_text(child: launcher.Child) -> str:
    assert child.log_path is not None
    return Path(child.log_path).read_text()


def ledger_rows(gateway: Gateway, expected: int, timeout_s: float = 5.0) -> list[dict[str, object]]:
    """The gateway's usage records, once at least ``expected`` are on disk."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.closing(gateway.database.connect(read_only=True)) as db:
            cursor = db.execute("SELECT * FROM usage_events ORDER BY time")
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def scrape(url: str, name: str) -> float:
    """The sum of every series of metric ``name`` (labels given: that one) at url/metrics."""
    text = httpx.get(url + "/metrics", timeout=5).text
    prefixes = (name,) if name.endswith("}") else (name + "{", name + " ")
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefixes)
    )
