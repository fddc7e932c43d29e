"""The conventions of DESIGN.md, checked: ruff clean, formatted, mypy strict, pure core."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "inferplane"


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "src", "tests"],
        ["ruff", "format", "--check", "src", "tests"],
        ["mypy"],
    ],
    ids=["ruff", "ruff-format", "mypy"],
)
def test_tool_is_clean(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("pure", ["perf", "policy"])
def test_pure_packages_do_no_io_and_read_no_clock(pure: str) -> None:
    # The one rule of the architecture: decisions are pure, time is passed in.
    forbidden = {"time", "asyncio", "socket", "os", "subprocess", "random", "threading"}
    clock_reads = {"now", "utcnow", "today", "monotonic", "perf_counter", "time_ns"}
    forbidden_inferplane = ("gateway", "ledger", "twin", "engines", "launcher", "server")
    for path in (PACKAGE / pure).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top not in forbidden, f"{path.name} imports {name}"
                parts = name.split(".")
                if parts[0] == "inferplane" and len(parts) > 1:
                    assert parts[1] not in forbidden_inferplane, f"{path.name} imports {name}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                pytest.fail(f"{path.name} opens a file")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) in clock_reads:
                pytest.fail(f"{path.name} reads a clock ({ast.unparse(node)})")
