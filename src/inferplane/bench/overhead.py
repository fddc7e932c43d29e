"""``inferplane bench overhead``: what the gateway adds on top of calling a replica directly.

One run starts a real emulated replica and a real gateway (one worker
process) in front of it, then drives both with the same load, side by side,
at several concurrencies, streaming and not. Reported: requests/s, p50/p99
latency (first byte for streams), the gateway's added p50/p99, and the
throughput ratio gateway/direct. Absolute numbers depend on the machine; the
side-by-side differences and ratios are the result.
"""

from __future__ import annotations

import asyncio
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from inferplane import launcher
from inferplane.bench._loadgen import LoadResult, run_load

__all__ = ["OverheadCase", "run_overhead"]

_KEY = "sk-bench"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass(frozen=True)
class OverheadCase:
    stream: bool
    concurrency: int
    direct: LoadResult
    gateway: LoadResult

    def row(self) -> dict[str, Any]:
        d, g = self.direct, self.gateway
        measure = "first_byte_s" if self.stream else "latencies_s"
        dp50, dp99 = (percentile(getattr(d, measure), q) for q in (50, 99))
        gp50, gp99 = (percentile(getattr(g, measure), q) for q in (50, 99))
        return {
            "stream": self.stream,
            "concurrency": self.concurrency,
            "direct_rps": round(d.requests_per_s, 1),
            "gateway_rps": round(g.requests_per_s, 1),
            "rps_ratio": round(g.requests_per_s / d.requests_per_s, 3)
            if d.requests_per_s
            else None,
            "direct_p50_ms": round(dp50 * 1e3, 3),
            "direct_p99_ms": round(dp99 * 1e3, 3),
            "gateway_p50_ms": round(gp50 * 1e3, 3),
            "gateway_p99_ms": round(gp99 * 1e3, 3),
            "added_p50_ms": round((gp50 - dp50) * 1e3, 3),
            "added_p99_ms": round((gp99 - dp99) * 1e3, 3),
            "errors": d.errors + g.errors,
        }


def _gateway_config(upstream_port: int, gateway_port: int) -> str:
    from inferplane.gateway import hash_key

    return f"""
gateway: {{host: 127.0.0.1, port: {gateway_port}}}
models:
  llama-3.1-8b:
    backends:
      - url: http://127.0.0.1:{upstream_port}
        engine: vllm
tenants:
  bench:
    keys: [{{name: bench, sha256: {hash_key(_KEY)}}}]
"""


def run_overhead(
    *,
    concurrencies: tuple[int, ...] = (1, 16, 64, 200),
    duration_s: float = 4.0,
    output_tokens: int = 16,
    time_scale: float = 1000.0,
    modes: tuple[bool, ...] = (False, True),
    out: Path | None = None,
    echo: Any = print,
) -> list[dict[str, Any]]:
    """Run the benchmark; returns the table rows and writes them as JSON to ``out``."""
    upstream_port, gateway_port = launcher.free_port(), launcher.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="inferplane-bench-"))
    config_path = workdir / "gateway.yaml"
    config_path.write_text(_gateway_config(upstream_port, gateway_port))
    py = [sys.executable, "-m", "inferplane"]
    engine = launcher.start(
        "engine",
        f"http://127.0.0.1:{upstream_port}",
        [*py, "engine", "emulate", "--port", str(upstream_port), "--time-scale", str(time_scale)],
        log_dir=workdir,
    )
    gateway = launcher.start(
        "gateway",
        f"http://127.0.0.1:{gateway_port}",
        [*py, "serve", "--config", str(config_path)],
        log_dir=workdir,
    )
    rows: list[dict[str, Any]] = []
    try:
        launcher.wait_healthy([engine, gateway])
        echo(HEADER)
        for stream in modes:
            body = orjson.dumps(
                {
                    "model": "llama-3.1-8b",
                    "messages": [{"role": "user", "content": "Say something short."}],
                    "max_tokens": output_tokens,
                    "ignore_eos": True,
                    "stream": stream,
                }
            )
            for c in concurrencies:
                case = asyncio.run(
                    _measure(upstream_port, gateway_port, body, stream, c, duration_s)
                )
                rows.append(case.row())
                echo(_format_row(rows[-1]))
    finally:
        launcher.stop_all([gateway, engine])
    report = {
        "benchmark": "overhead",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": _cpus(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": {
            "duration_s": duration_s,
            "output_tokens": output_tokens,
            "time_scale": time_scale,
            "gateway_workers": 1,
        },
        "rows": rows,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return rows


async def _measure(
    upstream_port: int,
    gateway_port: int,
    body: bytes,
    stream: bool,
    concurrency: int,
    duration_s: float,
) -> OverheadCase:
    path = "/v1/chat/completions"
    direct = await run_load(
        "127.0.0.1", upstream_port, path, body, concurrency=concurrency, duration_s=duration_s
    )
    gateway = await run_load(
        "127.0.0.1",
        gateway_port,
        path,
        body,
        concurrency=concurrency,
        duration_s=duration_s,
        api_key=_KEY,
    )
    return OverheadCase(stream, concurrency, direct, gateway)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


HEADER = (
    f"{'mode':<7}{'conc':>5}{'direct rps':>12}{'gw rps':>10}{'ratio':>7}"
    f"{'direct p50':>12}{'gw p50':>9}{'+p50 ms':>9}{'direct p99':>12}{'gw p99':>9}"
    f"{'+p99 ms':>9}{'err':>5}"
)


def _format_row(r: dict[str, Any]) -> str:
    return (
        f"{'stream' if r['stream'] else 'whole':<7}{r['concurrency']:>5}"
        f"{r['direct_rps']:>12.0f}{r['gateway_rps']:>10.0f}{r['rps_ratio'] or 0:>7.2f}"
        f"{r['direct_p50_ms']:>12.2f}{r['gateway_p50_ms']:>9.2f}{r['added_p50_ms']:>9.2f}"
        f"{r['direct_p99_ms']:>12.2f}{r['gateway_p99_ms']:>9.2f}{r['added_p99_ms']:>9.2f}"
        f"{r['errors']:>5}"
    )
