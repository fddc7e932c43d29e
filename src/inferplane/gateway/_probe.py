"""Active checks of every backend now and then: ``GET /health`` (vLLM, SGLang, TGI and
llama.cpp all serve it) feeds its breaker; for backends whose slots or token capacity
are learned, ``GET /metrics`` (vLLM's names) feeds ``policy.learn_slots`` and
``policy.learn_token_capacity``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from inferplane.policy import EngineLoad, Health

__all__ = ["Target", "check_forever", "engine_load", "fetch"]

log = logging.getLogger("inferplane.gateway")


@dataclass(frozen=True, slots=True)
class Target:
    health: Health
    index: int
    url: str
    learn: Callable[[EngineLoad], None] | None = None  # capacity learned from /metrics


async def fetch(url: str, path: str, timeout_s: float) -> tuple[int, bytes]:
    """(status, body) of ``GET url+path``; status 0 when it could not be had in time."""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if tls else 80)
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls or None)
            target = (parts.path.rstrip("/") or "") + path
            writer.write(
                f"GET {target} HTTP/1.1\r\nhost: {parts.netloc}\r\nconnection: close\r\n\r\n"
                .encode()
            )  # fmt: skip
            response = await reader.read()
    except (OSError, TimeoutError):
        return 0, b""
    finally:
        if writer is not None:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    fields = head.split(b"\r\n", 1)[0].split()
    status = int(fields[1]) if len(fields) >= 2 and fields[1].isdigit() else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body


def _unchunk(body: bytes) -> bytes:
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return b"".join(out)


def engine_load(metrics_text: str) -> EngineLoad | None:
    """Running and waiting requests and KV usage from vLLM-named metrics; None when the
    backend does not report them."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name in _NAMES:
            found[family.name] = sum(s.value for s in family.samples)
    if "vllm:num_requests_running" not in found:
        return None
    return EngineLoad(
        running=int(found["vllm:num_requests_running"]),
        waiting=int(found.get("vllm:num_requests_waiting", 0)),
        kv_usage=found.get("vllm:kv_cache_usage_perc", 0.0),
    )


_NAMES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


async def _check(target: Target, timeout_s: float) -> None:
    status, _ = await fetch(target.url, "/health", timeout_s)
    target.health.checked(target.index, status == 200, time.monotonic())
    if status != 200:
        log.warning("health check of %s failed (status %s)", target.url, status or "none")
        return
    if target.learn is not None:
        status, body = await fetch(target.url, "/metrics", timeout_s)
        try:
            load = engine_load(body.decode(errors="replace")) if status == 200 else None
        except ValueError as exc:  # not Prometheus text (an HTML page, say)
            log.warning("metrics of %s unreadable, limits not learned: %s", target.url, exc)
            return
        if load is not None:
            target.learn(load)


async def check_forever(targets: Sequence[Target], interval_s: float, timeout_s: float) -> None:
    """Every ``interval_s``, check every target, all at once."""
    while True:
        await asyncio.sleep(interval_s)
        results = await asyncio.gather(
            *(_check(t, timeout_s) for t in targets), return_exceptions=True
        )
        # One backend's surprise must not end the checks of all of them for good.
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, Exception):
                log.error("health check of %s failed: %r", target.url, result)
