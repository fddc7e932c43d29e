"""What every benchmark's JSON starts with, and where it is written."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["save_report"]


def save_report(
    benchmark: str, params: dict[str, Any], results: dict[str, Any], out: Path | None
) -> dict[str, Any]:
    """The report: name, date, machine, parameters, then the results; written to ``out``."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {
        "benchmark": benchmark,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": cpus,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": params,
        **results,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report
