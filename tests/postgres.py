"""A throwaway PostgreSQL server for the tests: initdb and pg_ctl from the machine's
PostgreSQL (Debian's ``postgresql`` package; ``.ci/run`` installs it), on a free port.

Set ``INFERPLANE_TEST_POSTGRES`` to a server URL (``postgresql://user@host:port``)
to use a running server instead; each test gets a database of its own either way.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from inferplane import launcher

_counter = itertools.count()


def _bindir() -> Path:
    if (found := shutil.which("pg_ctl")) is not None:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError(
            "PostgreSQL is not installed: the tests need it (apt-get install postgresql, "
            "which .ci/run does), or INFERPLANE_TEST_POSTGRES set to a server URL"
        )
    return Path(candidates[-1]).parent


class PostgresServer:
    """Started on construction; ``stop`` removes it and its files."""

    def __init__(self) -> None:
        self._root: Path | None = None
        url = os.environ.get("INFERPLANE_TEST_POSTGRES")
        if url:
            self.url = url.rstrip("/")
            return
        bindir = _bindir()
        self._root = root = Path(tempfile.mkdtemp(prefix="inferplane-pg-"))
        # PostgreSQL refuses to run as root: run it as the postgres user when we are root.
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        data = root / "data"
        self._pg_ctl = [*self._as, str(bindir / "pg_ctl"), "-D", str(data)]
        _run([*self._as, str(bindir / "initdb"), "-D", str(data), "-U", "inferplane",
              "--auth=trust", "-E", "UTF8", "--no-sync"])  # fmt: skip
        port = launcher.free_port()
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c max_connections=300 "
            # A test server: its own durability is not under test, speed is welcome.
            "-c fsync=off -c full_page_writes=off"
        )
        _run([*self._pg_ctl, "-l", str(root / "log"), "-o", options, "-w", "start"])
        self.url = f"postgresql://inferplane@127.0.0.1:{port}"

    def create_database(self) -> str:
        """A new empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(_counter)}"
        with psycopg.connect(f"{self.url}/postgres", autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"

    def stop(self) -> None:
        if self._root is None:
            return
        subprocess.run([*self._pg_ctl, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(self._root, ignore_errors=True)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[-1]} failed ({done.returncode}): {done.stderr.strip()}")
