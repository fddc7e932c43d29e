"""``inferplane bench slo``: SLO attainment, goodput and fairness under overload, inferplane's
policies against a plain FIFO + round-robin gateway, side by side on the same replicas.

Setup: emulated Llama-3.1-8B replicas (H100 pace, sped up by ``time_scale``),
each running at most ``slots`` requests at once (``--max-num-seqs``, queueing
the rest first come, first served, as vLLM does), and two gateways in front of
the same replicas:

- ``inferplane``: SLO classes, a gateway queue (``max_concurrency`` slots per
  replica) ordered by class priority with aging and by token fairness between
  tenants, admission that refuses what cannot meet its class (429), least-loaded
  routing;
- ``fifo``: every request straight to the replicas, round robin; the engines
  queue first come, first served (what a plain proxy gives).

Load: open loop, Poisson arrivals, three tenants and three classes. Tenants
``a`` and ``b`` send batch work in a 10:1 ratio; ``c`` sends the realtime and
interactive traffic. The offered rate is a multiple of the fleet's capacity,
measured first by a closed loop that keeps every slot busy. SLOs (engine
seconds, divided by the time scale on the wall): realtime TTFT <= 0.5 s,
interactive TTFT <= 2 s, batch end-to-end <= 600 s. A refused request misses
its SLO. Fairness is its own run: only ``a`` and ``b`` (equal weights), batch at
10:1 demand and twice the capacity; Jain's index over the tokens each got
served while the load lasted, each divided by its max-min fair share.

Prefix affinity is a third run (``run_prefix_affinity``): requests from 16 teams,
each sending its own 2,000-token system prompt and a short question, Poisson at a
moderate rate, against fresh replicas (cold prefix caches) with the gateway
routing ``least_loaded``, then the same arrivals against fresh replicas with
``prefix_affinity``. Each replica's KV cache is capped so the 16 prompts fit in
the fleet's caches but not in any one: the regime where routing decides what a
cache holds. Reported: TTFT (mean, p50, p99) and the engines' prefix-cache hit
rate (``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total``).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from inferplane import launcher
from inferplane.bench._report import save_report
from inferplane.gateway import Http1Upstream, UpstreamError
from inferplane.perf import filler_text
from inferplane.wire import SSEDecoder, sse_payload

__all__ = ["run_prefix_affinity", "run_slo"]

_MODEL = "llama-3.1-8b"
# Engine-second SLO targets: (metric, limit).
_TARGETS = {"realtime": ("ttft", 0.5), "interactive": ("ttft", 2.0), "batch": ("e2e", 600.0)}
# Who sends what: (tenant, class, share of the offered rate, output tokens).
_STREAMS = (
    ("c", "realtime", 0.15, 16),
    ("c", "interactive", 0.25, 32),
    ("a", "batch", 0.60 * 10 / 11, 64),
    ("b", "batch", 0.60 * 1 / 11, 64),
)
# The mix's mean output, for the capacity run.
_MEAN_OUTPUT = round(sum(share * out for _, _, share, out in _STREAMS))
_PROMPT = "Summarise the customer's ticket and propose the next step. " * 8


@dataclass(slots=True)
class _Outcome:
    tenant: str
    slo_class: str
    status: int
    ttft_s: float | None
    e2e_s: float
    output_tokens: int
    asked_tokens: int = 0
    arrival_s: float = 0.0  # since the load began


def _config(
    name: str,
    replicas: list[str],
    port: int,
    workdir: Path,
    slots: int,
    ts: float,
    routing: str | None = None,
) -> str:
    """``inferplane``: classes, the gateway queue, least-loaded routing; any other name:
    a plain proxy routing round robin, or by ``routing``."""
    from inferplane.gateway import hash_key

    queued = name == "inferplane"
    backend_extra = f", max_concurrency: {slots}" if queued else ""
    backends = ", ".join(f"{{url: '{u}', engine: vllm{backend_extra}}}" for u in replicas)
    classes = ""
    if queued:
        classes = (
            "slo_classes:\n"
            f"  realtime: {{priority: 0, max_queue_s: {0.4 / ts:.4f}}}\n"
            f"  interactive: {{priority: 1, max_queue_s: {1.6 / ts:.4f}}}\n"
            f"  batch: {{priority: 2, max_queue_s: {600 / ts:.4f}}}\n"
            f"queue_aging_s: {60 / ts:.4f}\n"
        )
    tenants = "".join(
        f"  {t}:\n    keys: [{{name: {t}, sha256: {hash_key('sk-' + t)}}}]\n" for t in "abc"
    )
    routing = routing or ("least_loaded" if queued else "round_robin")
    return (
        f"gateway: {{port: {port}, read_timeout_s: 600, max_connections_per_backend: 4096}}\n"
        f"data_dir: {workdir / name}\nusage_ledger: false\n{classes}"
        f"models:\n  {_MODEL}:\n    routing: {routing}\n    backends: [{backends}]\n"
        f"tenants:\n{tenants}"
    )


async def _one(
    http: Http1Upstream,
    url: str,
    tenant: str,
    cls: str,
    output_tokens: int,
    messages: list[dict[str, str]] | None = None,
) -> _Outcome:
    body = orjson.dumps(
        {
            "model": _MODEL,
            "messages": messages or [{"role": "user", "content": _PROMPT}],
            "max_tokens": output_tokens,
            "ignore_eos": True,
            "stream": True,
        }
    )
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer sk-{tenant}",
        "x-inferplane-class": cls,
    }
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        resp = await http.post(url + "/v1/chat/completions", body, headers)
        if resp.status != 200:
            await resp.read()
            return _Outcome(tenant, cls, resp.status, None, time.perf_counter() - t0, 0)
        decoder = SSEDecoder()
        async for piece in resp.chunks():
            for event in decoder.feed(piece):
                data = sse_payload(event)
                if data.startswith(b"{") and b'"content":"' in data and b'"content":""' not in data:
                    tokens += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    except UpstreamError:
        return _Outcome(tenant, cls, 599, ttft, time.perf_counter() - t0, tokens)
    return _Outcome(tenant, cls, 200, ttft, time.perf_counter() - t0, tokens)


_FAIRNESS = (("a", "batch", 10 / 11, 64), ("b", "batch", 1 / 11, 64))


async def _timed(
    http: Http1Upstream, url: str, tenant: str, cls: str, out: int, at: float
) -> _Outcome:
    outcome = await _one(http, url, tenant, cls, out)
    outcome.arrival_s, outcome.asked_tokens = at, out
    return outcome


async def _open_loop(
    url: str,
    rate: float,
    duration_s: float,
    seed: int,
    streams: tuple[tuple[str, str, float, int], ...] = _STREAMS,
) -> list[_Outcome]:
    """Poisson arrivals of every stream for ``duration_s``; waits for all to end."""
    http = Http1Upstream(connect_timeout_s=5, read_timeout_s=600, max_connections_per_host=4096)
    rng = random.Random(seed)
    tasks: list[asyncio.Task[_Outcome]] = []
    start = time.perf_counter()
    arrivals = []
    for tenant, cls, share, out in streams:
        t = 0.0
        while True:
            t += rng.expovariate(rate * share)
            if t >= duration_s:
                break
            arrivals.append((t, tenant, cls, out))
    arrivals.sort()
    for t, tenant, cls, out in arrivals:
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(http, url, tenant, cls, out, t)))
    outcomes = list(await asyncio.gather(*tasks))
    await http.aclose()
    return outcomes


async def _capacity(url: str, concurrency: int, duration_s: float) -> float:
    """Requests per second a closed loop gets with every slot busy (batch-sized requests)."""
    http = Http1Upstream(connect_timeout_s=5, read_timeout_s=600, max_connections_per_host=4096)
    done = 0
    stop = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            outcome = await _one(http, url, "a", "batch", _MEAN_OUTPUT)
            done += outcome.status == 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await http.aclose()
    return done / duration_s


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _jain(values: list[float]) -> float:
    if not values or not any(values):
        return 1.0
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def _summarise(outcomes: list[_Outcome], duration_s: float, ts: float) -> dict[str, Any]:
    classes: dict[str, Any] = {}
    for cls, (metric, limit) in _TARGETS.items():
        mine = [o for o in outcomes if o.slo_class == cls]
        met = [
            o
            for o in mine
            if o.status == 200
            and ((o.ttft_s if metric == "ttft" else o.e2e_s) or math.inf) * ts <= limit
        ]
        ttfts = [o.ttft_s * ts for o in mine if o.ttft_s is not None]
        classes[cls] = {
            "offered": len(mine),
            "refused": sum(1 for o in mine if o.status == 429),
            "failed": sum(1 for o in mine if o.status not in (200, 429)),
            "attainment": round(len(met) / len(mine), 4) if mine else None,
            "goodput_rps": round(len(met) / duration_s, 2),
            "ttft_p50_s": _percentile(ttfts, 0.5),
            "ttft_p99_s": _percentile(ttfts, 0.99),
        }
    return {"classes": classes}


def _fairness(outcomes: list[_Outcome], duration_s: float) -> dict[str, Any]:
    """Jain's index over tenants of the tokens each got served while the load lasted,
    each divided by its max-min fair share of what was served: 1 is fair."""
    tenants = sorted({o.tenant for o in outcomes})
    served = {
        t: sum(
            o.output_tokens
            for o in outcomes
            if o.tenant == t and o.status == 200 and o.arrival_s + o.e2e_s <= duration_s
        )
        for t in tenants
    }
    offered = {t: sum(o.asked_tokens for o in outcomes if o.tenant == t) for t in tenants}
    # Max-min fair shares of the served total: the smallest demands are met in full.
    left: float = sum(served.values())
    fair: dict[str, float] = {}
    for i, t in enumerate(sorted(tenants, key=lambda t: offered[t])):
        fair[t] = min(offered[t], left / (len(tenants) - i))
        left -= fair[t]
    ratios = [served[t] / fair[t] if fair[t] else 1.0 for t in tenants]
    return {"jain": round(_jain(ratios), 4), "served_tokens": served, "offered_tokens": offered}


def run_slo(
    *,
    replicas: int = 1,
    slots: int = 16,
    time_scale: float = 1.0,
    loads: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0),
    duration_s: float = 20.0,
    seed: int = 7,
    out: Path | None = None,
    echo: Callable[[str], None] = print,
    prefix_replicas: int = 3,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="inferplane-bench-slo-"))
    children: list[launcher.Child] = []
    try:
        # The engines run at most ``slots`` at once and queue the rest FIFO, as vLLM
        # does with max_num_seqs: both gateways face the same capacity.
        children += _start_engines(replicas, slots, time_scale, workdir)
        urls = [child.url for child in children]
        gateways = {}
        for name in ("inferplane", "fifo"):
            port = launcher.free_port()
            config = _config(name, urls, port, workdir, slots, time_scale)
            gateways[name] = _start_gateway(name, port, config, workdir)
            children.append(gateways[name])
        launcher.wait_healthy(children)
        capacity = asyncio.run(
            _capacity(gateways["inferplane"].url, replicas * slots * 2, duration_s / 2)
        )
        echo(f"fleet capacity (closed loop, {replicas * slots} slots): {capacity:.1f} req/s")
        rows = []
        header = (
            f"{'load':>5} {'gateway':<11}{'class':<12}{'attain':>8}{'goodput':>9}"
            f"{'p50 ttft':>10}{'p99 ttft':>10}{'refused':>8}"
        )
        echo(header)
        for load in loads:
            for name, child in gateways.items():
                outcomes = asyncio.run(_open_loop(child.url, load * capacity, duration_s, seed))
                summary = _summarise(outcomes, duration_s, time_scale)
                rows.append({"load": load, "gateway": name, **summary})
                for cls, c in summary["classes"].items():
                    echo(
                        f"{load:>5} {name:<11}{cls:<12}{_fmt(c['attainment'], 3):>8}"
                        f"{c['goodput_rps']:>9.2f}{_fmt(c['ttft_p50_s'], 2):>10}"
                        f"{_fmt(c['ttft_p99_s'], 2):>10}{c['refused']:>8}"
                    )
        # Fairness: two equal tenants' batch work at 10:1 demand, twice the capacity.
        fairness = {}
        for name, child in gateways.items():
            outcomes = asyncio.run(_open_loop(child.url, 2 * capacity, duration_s, seed, _FAIRNESS))
            fairness[name] = _fairness(outcomes, duration_s)
            echo(f"fairness, 10:1 demand at 2x: {name:<11} Jain {fairness[name]['jain']}")
    finally:
        launcher.stop_all(children)
    prefix = None
    if prefix_replicas > 0:
        prefix = run_prefix_affinity(
            replicas=prefix_replicas,
            slots=slots,
            time_scale=time_scale,
            duration_s=duration_s,
            seed=seed,
            workdir=workdir,
            echo=echo,
        )
    return save_report(
        "slo",
        {
            "replicas": replicas,
            "slots_per_replica": slots,
            "time_scale": time_scale,
            "duration_s": duration_s,
            "seed": seed,
            "targets": _TARGETS,
            "streams": _STREAMS,
        },
        {
            "capacity_rps": round(capacity, 2),
            "rows": rows,
            "fairness_10_to_1_at_2x": fairness,
            "prefix_affinity": prefix,
        },
        out,
    )


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _start_engines(
    n: int, slots: int, time_scale: float, workdir: Path, *extra: str
) -> list[launcher.Child]:
    children = []
    for _ in range(n):
        port = launcher.free_port()
        argv = [sys.executable, "-m", "inferplane", "engine", "emulate", "--port", str(port)]
        argv += ["--time-scale", str(time_scale), "--max-num-seqs", str(slots), *extra]
        url = f"http://127.0.0.1:{port}"
        children.append(launcher.start(f"engine-{port}", url, argv, log_dir=workdir))
    return children


def _start_gateway(name: str, port: int, config: str, workdir: Path) -> launcher.Child:
    path = workdir / f"{name}.yaml"
    path.write_text(config)
    argv = [sys.executable, "-m", "inferplane", "serve", "--config", str(path)]
    return launcher.start(name, f"http://127.0.0.1:{port}", argv, log_dir=workdir)


# -- prefix affinity ------------------------------------------------------------

_PREFIX_GROUPS = 16  # teams, each with its own system prompt
_PREFIX_TOKENS = 2000  # tokens of each system prompt
_PREFIX_QUESTION_TOKENS = 24
_PREFIX_OUTPUT = 32
# Per replica: the 16 prompts (32k tokens) fit in three replicas' caches, not in one.
_PREFIX_KV_TOKENS = 24_576
_PREFIX_RATE = 10.0  # requests per engine second, per replica: a moderate load


def _system_prompt(group: int) -> str:
    # Filler words are one token each: the prompt is _PREFIX_TOKENS tokens past its header.
    header = f"You are the assistant of team {group}; follow its handbook below.\n"
    return header + "".join(filler_text(1000 + group, 0, _PREFIX_TOKENS))


def _prefix_arrivals(rate: float, duration_s: float, seed: int) -> list[tuple[float, int, str]]:
    """(time, team, question): Poisson arrivals, teams uniform, every question unique."""
    rng = random.Random(seed)
    arrivals: list[tuple[float, int, str]] = []
    t = rng.expovariate(rate)
    while t < duration_s:
        i = len(arrivals)
        words = "".join(filler_text(seed * 1_000_003 + i, 0, _PREFIX_QUESTION_TOKENS))
        arrivals.append((t, rng.randrange(_PREFIX_GROUPS), f"Question {i}: {words}?"))
        t += rng.expovariate(rate)
    return arrivals


async def _prefix_load(url: str, arrivals: list[tuple[float, int, str]]) -> list[_Outcome]:
    http = Http1Upstream(connect_timeout_s=5, read_timeout_s=600, max_connections_per_host=4096)
    prompts = [_system_prompt(g) for g in range(_PREFIX_GROUPS)]
    tasks: list[asyncio.Task[_Outcome]] = []
    start = time.perf_counter()
    for t, group, question in arrivals:
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        messages = [
            {"role": "system", "content": prompts[group]},
            {"role": "user", "content": question},
        ]
        one = _one(http, url, "a", "batch", _PREFIX_OUTPUT, messages)
        tasks.append(asyncio.create_task(one))
    outcomes = list(await asyncio.gather(*tasks))
    await http.aclose()
    return outcomes


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
    return text


def _metric_sum(texts: list[str], name: str) -> float:
    """The sum over replicas of one series (its first sample on each)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.MULTILINE)
    return sum(float(m.group(1)) for text in texts if (m := pattern.search(text)))


def _prefix_summary(outcomes: list[_Outcome], metrics: list[str], ts: float) -> dict[str, Any]:
    ttfts = [o.ttft_s * ts for o in outcomes if o.ttft_s is not None and o.status == 200]
    queries = _metric_sum(metrics, "vllm:prefix_cache_queries_total")
    hits = _metric_sum(metrics, "vllm:prefix_cache_hits_total")
    engine_ttft = _metric_sum(metrics, "vllm:time_to_first_token_seconds_sum")
    engine_count = _metric_sum(metrics, "vllm:time_to_first_token_seconds_count")
    return {
        "requests": len(outcomes),
        "failed": sum(1 for o in outcomes if o.status != 200),
        "ttft_mean_s": round(statistics.fmean(ttfts), 4) if ttfts else None,
        "ttft_p50_s": _round(_percentile(ttfts, 0.5)),
        "ttft_p99_s": _round(_percentile(ttfts, 0.99)),
        "prefix_cache_queries_tokens": int(queries),
        "prefix_cache_hits_tokens": int(hits),
        "prefix_cache_hit_rate": round(hits / queries, 4) if queries else None,
        # The engines' own TTFT (engine seconds): the model's figure, without the
        # gateway's and the client's CPU time on a shared machine.
        "engine_ttft_mean_s": round(engine_ttft / engine_count, 4) if engine_count else None,
    }


def run_prefix_affinity(
    *,
    replicas: int = 3,
    slots: int = 16,
    time_scale: float = 1.0,
    duration_s: float = 20.0,
    seed: int = 7,
    workdir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """TTFT and prefix-cache hit rate of ``least_loaded`` against ``prefix_affinity``
    routing: the same arrivals, each against fresh replicas (cold caches)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="inferplane-bench-prefix-"))
    rate = _PREFIX_RATE * replicas * time_scale  # wall requests per second
    arrivals = _prefix_arrivals(rate, duration_s, seed)
    echo(
        f"shared prefixes: {_PREFIX_GROUPS} system prompts of {_PREFIX_TOKENS:,} tokens, "
        f"{replicas} replicas with {_PREFIX_KV_TOKENS:,} tokens of KV cache each, "
        f"{rate / time_scale:.0f} req/s"
    )
    echo(
        f"{'routing':<17}{'mean ttft':>10}{'p50 ttft':>10}{'p99 ttft':>10}"
        f"{'hit rate':>10}{'engine ttft':>12}"
    )
    runs: dict[str, Any] = {}
    for routing in ("least_loaded", "prefix_affinity"):
        kv = ("--kv-capacity-tokens", str(_PREFIX_KV_TOKENS))
        children = _start_engines(replicas, slots, time_scale, workdir / routing, *kv)
        try:
            urls = [child.url for child in children]
            port = launcher.free_port()
            config = _config(routing, urls, port, workdir, slots, time_scale, routing)
            children.append(_start_gateway(routing, port, config, workdir))
            launcher.wait_healthy(children)
            outcomes = asyncio.run(_prefix_load(children[-1].url, arrivals))
            run = _prefix_summary(outcomes, [_scrape(url) for url in urls], time_scale)
        finally:
            launcher.stop_all(children)
        runs[routing] = run
        echo(
            f"{routing:<17}{_fmt(run['ttft_mean_s'], 3):>10}{_fmt(run['ttft_p50_s'], 3):>10}"
            f"{_fmt(run['ttft_p99_s'], 3):>10}{_fmt(run['prefix_cache_hit_rate'], 3):>10}"
            f"{_fmt(run['engine_ttft_mean_s'], 3):>12}"
        )
    reduction = _reduction_pct(runs, "ttft_mean_s")
    engine_reduction = _reduction_pct(runs, "engine_ttft_mean_s")
    echo(
        f"prefix affinity vs least_loaded: mean TTFT {_fmt(reduction, 1)}% lower "
        f"({_fmt(engine_reduction, 1)}% in the engines' own TTFT)"
    )
    return {
        "setup": {
            "replicas": replicas,
            "groups": _PREFIX_GROUPS,
            "system_prompt_tokens": _PREFIX_TOKENS,
            "question_tokens": _PREFIX_QUESTION_TOKENS,
            "output_tokens": _PREFIX_OUTPUT,
            "kv_capacity_tokens": _PREFIX_KV_TOKENS,
            "rate_rps": round(rate / time_scale, 2),
            "requests": len(arrivals),
        },
        **runs,
        "mean_ttft_reduction_pct": reduction,
        "engine_mean_ttft_reduction_pct": engine_reduction,
    }


def _reduction_pct(runs: dict[str, Any], metric: str) -> float | None:
    base, affinity = runs["least_loaded"][metric], runs["prefix_affinity"][metric]
    return round(100 * (1 - affinity / base), 1) if base and affinity is not None else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
