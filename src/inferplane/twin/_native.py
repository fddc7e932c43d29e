"""Whether the twin runs compiled (``setup.py`` builds its hot path with mypyc), and the
same code as plain Python beside it, for the comparisons of ``bench twin`` and the tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import inferplane
from inferplane.engines import _core
from inferplane.twin import _gateway

__all__ = ["compiled", "plain_sources"]


def compiled() -> bool:
    """True when the engine core and the simulated gateway are C extensions (the same
    code, 2.3-2.5 times as fast), False when they run as plain Python."""
    return all(not str(m.__file__).endswith(".py") for m in (_core, _gateway))


def plain_sources(dest: Path) -> Path:
    """Copy the package's sources, without its compiled modules, under ``dest``; a
    process with the returned folder first on ``sys.path`` runs it all as plain Python."""
    package = Path(inferplane.__file__).parent
    shutil.copytree(package, dest / "inferplane", ignore=shutil.ignore_patterns("*.so", "*.pyd"))
    return dest
