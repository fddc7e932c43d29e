"""Replay a twin workload against a live gateway, open loop, and time what clients see.

Each arrival becomes one streamed ``/v1/completions`` request at its time (divided
by the engines' ``time_scale``): a prompt of exactly ``prompt_tokens`` token ids
and ``max_tokens = output_tokens`` with ``ignore_eos``, so the emulated engines do
exactly the work the twin simulates. Times are reported in engine seconds, like
the twin's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import orjson

from inferplane.gateway import Http1Upstream, UpstreamError
from inferplane.policy import stable_hash
from inferplane.twin._workload import Arrival
from inferplane.wire import SSEDecoder, sse_payload

__all__ = ["Replayed", "replay"]


@dataclass(slots=True)
class Replayed:
    arrival: Arrival
    status: int
    code: str | None = None  # the OpenAI error code of a refusal
    ttft_s: float | None = None
    e2e_s: float | None = None


async def replay(
    url: str,
    arrivals: Iterable[Arrival],
    keys: Mapping[str, str],
    *,
    time_scale: float = 1.0,
) -> list[Replayed]:
    """Send every arrival at its time; ``keys`` maps tenants to their API keys."""
    http = Http1Upstream(connect_timeout_s=5, read_timeout_s=600, max_connections_per_host=4096)
    tasks: list[asyncio.Task[Replayed]] = []
    start = time.perf_counter()
    try:
        for arrival in arrivals:
            delay = start + arrival.time / time_scale - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = _one(http, url, arrival, len(tasks), keys, time_scale)
            tasks.append(asyncio.create_task(task))
        return list(await asyncio.gather(*tasks))
    finally:
        await http.aclose()


def _prompt(a: Arrival, index: int) -> list[int]:
    """Token ids the engines' prefix caches see as the twin does: the arrival's shared
    prefix (one id per prefix key), then ids unique to this request."""
    shared = min(a.prefix_tokens, a.prompt_tokens - 1) if a.prefix_key else 0
    prefix_id = 1 + stable_hash(a.prefix_key) % 50_000 if a.prefix_key else 0
    return [prefix_id] * shared + [50_001 + index] * (a.prompt_tokens - shared)


async def _one(
    http: Http1Upstream,
    url: str,
    a: Arrival,
    index: int,
    keys: Mapping[str, str],
    time_scale: float,
) -> Replayed:
    body = orjson.dumps(
        {
            "model": a.model,
            "prompt": _prompt(a, index),
            "max_tokens": a.output_tokens,
            "ignore_eos": True,
            "stream": True,
        }
    )
    headers = {
        "content-type": "application/json",
        "authorization": f"Bearer {keys[a.tenant]}",
        "x-inferplane-class": a.slo_class,
    }
    if a.workflow:
        headers["x-inferplane-workflow"] = a.workflow
    t0 = time.perf_counter()
    try:
        resp = await http.post(url + "/v1/completions", body, headers)
        if resp.status != 200:
            error = orjson.loads(await resp.read()).get("error", {})
            return Replayed(a, resp.status, error.get("code"))
        ttft = None
        decoder = SSEDecoder()
        async for piece in resp.chunks():
            for event in decoder.feed(piece):
                if ttft is None and b'"text":"' in sse_payload(event):
                    ttft = (time.perf_counter() - t0) * time_scale
    except UpstreamError as exc:
        return Replayed(a, 599, type(exc).__name__)
    return Replayed(a, 200, None, ttft, (time.perf_counter() - t0) * time_scale)
