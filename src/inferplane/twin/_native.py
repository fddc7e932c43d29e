"""Whether the twin runs compiled (``setup.py`` builds its hot path with mypyc), and the
same code run as plain Python beside it, for ``bench twin`` and the tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import inferplane
from inferplane.engines import _core
from inferplane.twin import _gateway

__all__ = ["compiled", "run_plain"]


def compiled() -> bool:
    """True when the engine core and the simulated gateway are C extensions (the same
    code, 2.3-2.5 times as fast), False when they run as plain Python."""
    return all(not str(m.__file__).endswith(".py") for m in (_core, _gateway))


def run_plain(code: str) -> str:
    """Run ``code`` in a child process on a copy of the package's sources without its
    compiled modules (so all of it is plain Python); return what it printed."""
    package = Path(inferplane.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(package, Path(tmp, "inferplane"), ignore=shutil.ignore_patterns("*.so"))
        preamble = (
            f"import sys\nsys.path.insert(0, {tmp!r})\n"
            "from inferplane.twin import compiled\nassert not compiled()\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", preamble + code], check=True, stdout=subprocess.PIPE, text=True
        )
    return done.stdout
