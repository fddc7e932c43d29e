"""``inferplane bench budgets``: what budgets and the usage ledger cost the gateway.

One run starts a fast emulated replica and real gateways in front of it:
``bare`` (no budgets, ``usage_ledger: false``), ``sqlite`` (budgets on
tenant, key, workflow and run, every request charged to all four, and the
SQLite ledger committing each request before its answer) and, given a
PostgreSQL URL, ``postgres`` (the same on PostgreSQL). All get the same
closed-loop non-streaming load, alternating, several rounds, so drift of the
shared machine hits all; each round starts with another gateway. Reported:
req/s and gateway CPU per request each, and per round the ratios to bare, with
their median. The target of the budgets issue: >= 0.85 x bare.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from inferplane import launcher
from inferplane.bench._loadgen import run_load
from inferplane.bench._report import save_report
from inferplane.bench.overhead import cpu_seconds

__all__ = ["run_budgets"]

_KEY = "sk-bench"
_BUDGET = "{total_tokens: 100000000000, calls: 1000000000, cost_usd: 1000000}"


def _config(
    name: str, upstream_port: int, port: int, data_dir: Path, database_url: str | None
) -> str:
    from inferplane.gateway import hash_key

    accounted = name != "bare"
    budgets = (
        f"    budget: {_BUDGET}\n    workflow_budget: {_BUDGET}\n    run_budget: {_BUDGET}\n"
        if accounted
        else ""
    )
    key_budget = f", budget: {_BUDGET}" if accounted else ""
    return (
        f"gateway: {{host: 127.0.0.1, port: {port}}}\n"
        f"data_dir: {data_dir / name}\nusage_ledger: {str(accounted).lower()}\n"
        + (f"database_url: '{database_url}'\n" if database_url else "")
        + f"models:\n  llama-3.1-8b:\n    price: {{input_per_1m: 0.15, output_per_1m: 0.6}}\n"
        f"    backends: [{{url: 'http://127.0.0.1:{upstream_port}', engine: vllm}}]\n"
        f"tenants:\n  bench:\n{budgets}"
        f"    keys: [{{name: bench, sha256: {hash_key(_KEY)}{key_budget}}}]\n"
    )


def run_budgets(
    *,
    concurrency: int = 64,
    duration_s: float = 4.0,
    rounds: int = 3,
    postgres_url: str | None = None,
    out: Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="inferplane-bench-"))
    py = [sys.executable, "-m", "inferplane"]
    engine_port = launcher.free_port()
    engine = launcher.start(
        "engine",
        f"http://127.0.0.1:{engine_port}",
        [*py, "engine", "emulate", "--port", str(engine_port), "--time-scale", "1000"],
        log_dir=workdir,
    )
    stores: dict[str, str | None] = {"bare": None, "sqlite": None}
    if postgres_url is not None:
        stores["postgres"] = postgres_url
    gateways: dict[str, launcher.Child] = {}
    for name, url in stores.items():
        port = launcher.free_port()
        config = workdir / f"{name}.yaml"
        config.write_text(_config(name, engine_port, port, workdir, url))
        gateways[name] = launcher.start(
            name,
            f"http://127.0.0.1:{port}",
            [*py, "serve", "--config", str(config)],
            log_dir=workdir,
        )
    body = orjson.dumps(
        {
            "model": "llama-3.1-8b",
            "messages": [{"role": "user", "content": "Summarise the ticket in one line."}],
            "max_tokens": 16,
            "ignore_eos": True,
        }
    )
    totals = {name: {"requests": 0, "seconds": 0.0, "cpu_s": 0.0, "errors": 0} for name in gateways}
    # Per round and gateway: (req/s, CPU s per request), for ratios within a round.
    by_round: list[dict[str, tuple[float, float]]] = []
    try:
        launcher.wait_healthy([engine, *gateways.values()])
        echo(f"{'round':<7}{'gateway':<11}{'req/s':>8}{'cpu us/req':>12}{'errors':>8}")
        names = list(gateways)
        for r in range(rounds):
            # Each round starts with another gateway: none always runs first or last.
            order = names[r % len(names) :] + names[: r % len(names)]
            measured: dict[str, tuple[float, float]] = {}
            for name in order:
                child = gateways[name]
                port = int(child.url.rsplit(":", 1)[1])
                headers = {"X-Inferplane-Workflow": "bench", "X-Inferplane-Run": f"run-{r}"}
                before = cpu_seconds(child.process.pid)
                result = asyncio.run(
                    run_load(
                        "127.0.0.1",
                        port,
                        "/v1/chat/completions",
                        body,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        api_key=_KEY,
                        headers=headers,
                    )
                )
                cpu = (cpu_seconds(child.process.pid) - before) / max(1, result.num_completed)
                measured[name] = (result.requests_per_s, cpu)
                t = totals[name]
                t["requests"] += len(result.latencies_s)
                t["seconds"] += duration_s
                t["cpu_s"] += cpu * len(result.latencies_s)
                t["errors"] += result.errors
                echo(
                    f"{r + 1:<7}{name:<11}{result.requests_per_s:>8.0f}"
                    f"{cpu * 1e6:>12.0f}{result.errors:>8}"
                )
            by_round.append(measured)
    finally:
        launcher.stop_all([*gateways.values(), engine])
    for name, t in totals.items():
        if t["errors"]:
            echo(f"warning: {t['errors']:.0f} requests to {name} failed; its log: {workdir}")
    summary = {
        name: {
            "requests_per_s": round(t["requests"] / t["seconds"], 1),
            "cpu_us_per_request": round(t["cpu_s"] / max(1, t["requests"]) * 1e6, 1),
            "errors": int(t["errors"]),
        }
        for name, t in totals.items()
    }
    # The shared machine drifts between rounds more than between neighbours in time: the
    # ratio of each round, to bare run just before or after it, then their median.
    ratios = {}
    for name in summary:
        if name == "bare":
            continue
        throughput = [m[name][0] / m["bare"][0] for m in by_round if m["bare"][0] > 0]
        cpu_ratio = [m[name][1] / m["bare"][1] for m in by_round if m["bare"][1] > 0]
        ratios[name] = {
            "throughput": round(statistics.median(throughput), 3),
            "cpu_per_request": round(statistics.median(cpu_ratio), 3),
            "throughput_per_round": [round(x, 3) for x in throughput],
            "cpu_per_request_per_round": [round(x, 3) for x in cpu_ratio],
        }
        echo(
            f"{name}/bare, median of {len(throughput)} rounds: throughput "
            f"{ratios[name]['throughput']:.3f} ({min(throughput):.3f}-{max(throughput):.3f}), "
            f"CPU per request {ratios[name]['cpu_per_request']:.3f}"
        )
    return save_report(
        "budgets",
        {"concurrency": concurrency, "duration_s": duration_s, "rounds": rounds},
        {"gateways": summary, "ratios_to_bare": ratios},
        out,
    )
