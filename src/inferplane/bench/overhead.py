"""``inferplane bench overhead``: what the gateway adds on top of calling a replica directly.

One run starts real emulated replicas and one real gateway (one worker
process) in front of them, then drives the replica directly and through the
gateway with the same closed-loop load, side by side, at several
concurrencies. Two scenarios:

- ``whole``: non-streaming answers from a replica running 1000x faster than
  real time, so the gateway, not the GPU model, is what limits req/s;
- ``stream``: SSE streams from a replica in real time (Llama-3.1-8B on an
  H100), the way users see them; latency is to the first body byte.

Reported per row: req/s both ways and their ratio, p50/p99 latency both ways
and the difference (what the gateway adds), and the CPU time the gateway
process spent per request (from /proc), which does not depend on how busy
the shared machine was. Absolute numbers depend on the machine; the
side-by-side differences and ratios are the result.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from inferplane import launcher
from inferplane.bench._loadgen import LoadResult, run_load
from inferplane.bench._report import save_report

__all__ = ["SCENARIOS", "Scenario", "run_overhead"]

_KEY = "sk-bench"
_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Scenario:
    name: str
    stream: bool
    time_scale: float
    output_tokens: int


SCENARIOS = (
    Scenario("whole", stream=False, time_scale=1000.0, output_tokens=16),
    Scenario("stream", stream=True, time_scale=1.0, output_tokens=64),
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _row(
    scenario: Scenario,
    concurrency: int,
    direct: LoadResult,
    gateway: LoadResult,
    gateway_cpu_s: float,
) -> dict[str, Any]:
    measure = "first_byte_s" if scenario.stream else "latencies_s"
    dp50, dp99 = (percentile(getattr(direct, measure), q) for q in (50, 99))
    gp50, gp99 = (percentile(getattr(gateway, measure), q) for q in (50, 99))
    # Requests still in flight at the deadline also cost CPU; counting only completed
    # ones makes the figure a slight overestimate.
    cpu_us = gateway_cpu_s / gateway.num_completed * 1e6 if gateway.num_completed else None
    return {
        "scenario": scenario.name,
        "concurrency": concurrency,
        "direct_rps": round(direct.requests_per_s, 1),
        "gateway_rps": round(gateway.requests_per_s, 1),
        "rps_ratio": round(gateway.requests_per_s / direct.requests_per_s, 3)
        if direct.requests_per_s
        else None,
        "direct_p50_ms": round(dp50 * 1e3, 3),
        "direct_p99_ms": round(dp99 * 1e3, 3),
        "gateway_p50_ms": round(gp50 * 1e3, 3),
        "gateway_p99_ms": round(gp99 * 1e3, 3),
        "added_p50_ms": round((gp50 - dp50) * 1e3, 3),
        "added_p99_ms": round((gp99 - dp99) * 1e3, 3),
        "gateway_cpu_us_per_request": round(cpu_us, 1) if cpu_us is not None else None,
        "errors": direct.errors + gateway.errors,
    }


def _gateway_config(engine_ports: dict[str, int], gateway_port: int, data_dir: Path) -> str:
    from inferplane.gateway import hash_key

    models = "".join(
        f"  {name}:\n    backends:\n      - url: http://127.0.0.1:{port}\n        engine: vllm\n"
        f"        model: llama-3.1-8b\n"
        for name, port in engine_ports.items()
    )
    return (
        f"gateway: {{host: 127.0.0.1, port: {gateway_port}}}\ndata_dir: {data_dir}\n"
        f"models:\n{models}"
        f"tenants:\n  bench:\n    keys: [{{name: bench, sha256: {hash_key(_KEY)}}}]\n"
    )


def run_overhead(
    *,
    concurrencies: tuple[int, ...] = (1, 16, 64, 200),
    duration_s: float = 4.0,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
    out: Path | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run the benchmark; returns the table rows and writes them as JSON to ``out``."""
    workdir = Path(tempfile.mkdtemp(prefix="inferplane-bench-"))
    py = [sys.executable, "-m", "inferplane"]
    ports = {s.name: launcher.free_port() for s in scenarios}
    engines = [
        launcher.start(
            f"engine-{s.name}",
            f"http://127.0.0.1:{ports[s.name]}",
            [
                *py,
                "engine",
                "emulate",
                "--port",
                str(ports[s.name]),
                "--time-scale",
                str(s.time_scale),
            ],
            log_dir=workdir,
        )
        for s in scenarios
    ]
    gateway_port = launcher.free_port()
    config_path = workdir / "gateway.yaml"
    config_path.write_text(_gateway_config(ports, gateway_port, workdir / "data"))
    gateway = launcher.start(
        "gateway",
        f"http://127.0.0.1:{gateway_port}",
        [*py, "serve", "--config", str(config_path)],
        log_dir=workdir,
    )
    rows: list[dict[str, Any]] = []
    try:
        launcher.wait_healthy([*engines, gateway])
        echo(HEADER)
        for scenario in scenarios:
            for concurrency in concurrencies:
                rows.append(
                    asyncio.run(
                        _measure(scenario, ports[scenario.name], gateway, concurrency, duration_s)
                    )
                )
                echo(_format_row(rows[-1]))
    finally:
        launcher.stop_all([gateway, *engines])
    save_report(
        "overhead",
        {
            "duration_s": duration_s,
            "gateway_workers": 1,
            "scenarios": [vars(s) for s in scenarios],
        },
        {"rows": rows},
        out,
    )
    return rows


async def _measure(
    scenario: Scenario,
    engine_port: int,
    gateway: launcher.Child,
    concurrency: int,
    duration_s: float,
) -> dict[str, Any]:
    def body(model: str) -> bytes:
        return orjson.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "Say something short."}],
                "max_tokens": scenario.output_tokens,
                "ignore_eos": True,
                "stream": scenario.stream,
            }
        )

    direct = await run_load(
        "127.0.0.1",
        engine_port,
        _PATH,
        body("llama-3.1-8b"),
        concurrency=concurrency,
        duration_s=duration_s,
    )
    gateway_port = int(gateway.url.rsplit(":", 1)[1])
    cpu_before = cpu_seconds(gateway.process.pid)
    via = await run_load(
        "127.0.0.1",
        gateway_port,
        _PATH,
        body(scenario.name),
        concurrency=concurrency,
        duration_s=duration_s,
        api_key=_KEY,
    )
    cpu = cpu_seconds(gateway.process.pid) - cpu_before
    return _row(scenario, concurrency, direct, via, cpu)


HEADER = (
    f"{'scenario':<9}{'conc':>5}{'direct rps':>11}{'gw rps':>8}{'ratio':>7}"
    f"{'direct p50':>11}{'gw p50':>8}{'+p50':>8}{'direct p99':>11}{'gw p99':>8}{'+p99':>8}"
    f"{'gw cpu/req':>11}{'err':>5}\n"
    f"{'':<9}{'':>5}{'':>11}{'':>8}{'':>7}{'ms':>11}{'ms':>8}{'ms':>8}{'ms':>11}{'ms':>8}"
    f"{'ms':>8}{'us':>11}{'':>5}"
)


def _format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['scenario']:<9}{r['concurrency']:>5}{r['direct_rps']:>11.0f}{r['gateway_rps']:>8.0f}"
        f"{r['rps_ratio'] or 0:>7.2f}{r['direct_p50_ms']:>11.2f}{r['gateway_p50_ms']:>8.2f}"
        f"{r['added_p50_ms']:>8.2f}{r['direct_p99_ms']:>11.2f}{r['gateway_p99_ms']:>8.2f}"
        f"{r['added_p99_ms']:>8.2f}{r['gateway_cpu_us_per_request'] or 0:>11.0f}{r['errors']:>5}"
    )
