"""A lean closed-loop HTTP/1.1 load generator for benchmarks on a small machine.

Why our own: the load generator shares two cores with the servers it measures,
so it must cost as little CPU per request as possible. A general client
(aiohttp, httpx) spends several times more per request than this keep-alive
loop over raw asyncio streams, which would cap the rates we can observe.
It speaks just enough HTTP/1.1: fixed-length and chunked bodies, keep-alive.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    concurrency: int
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    first_byte_s: list[float] = field(default_factory=list)
    errors: int = 0
    num_completed: int = 0  # warm-up included, for per-request resource accounting

    @property
    def requests_per_s(self) -> float:
        return len(self.latencies_s) / self.duration_s if self.duration_s > 0 else 0.0


def build_post(
    host: str,
    port: int,
    path: str,
    body: bytes,
    api_key: str | None,
    headers: dict[str, str] | None = None,
) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if api_key:
        head.append(f"Authorization: Bearer {api_key}")
    head.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader, t0: float) -> tuple[int, float]:
    """Read one response; returns (status, seconds to the first body byte)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    first = time.perf_counter() - t0
    if b"transfer-encoding: chunked" in lowered:
        got_first = False
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if not got_first:
                first = time.perf_counter() - t0
                got_first = True
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        start = lowered.find(b"content-length:")
        end = lowered.find(b"\r\n", start)
        length = int(lowered[start + 15 : end])
        await reader.readexactly(length)
    return status, first


async def _worker(
    host: str, port: int, request: bytes, deadline: float, result: LoadResult, warmup_until: float
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while (t0 := time.perf_counter()) < deadline:
            writer.write(request)
            try:
                status, first = await _read_response(reader, t0)
            except (asyncio.IncompleteReadError, ConnectionError, ValueError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.num_completed += 1
            if t0 < warmup_until:
                continue
            if status != 200:
                result.errors += 1
                continue
            result.latencies_s.append(time.perf_counter() - t0)
            result.first_byte_s.append(first)
    finally:
        writer.close()


async def run_load(
    host: str,
    port: int,
    path: str,
    body: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.5,
    api_key: str | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """``concurrency`` connections, each sending requests back to back for ``duration_s``."""
    request = build_post(host, port, path, body, api_key, headers)
    start = time.perf_counter()
    warmup_until = start + warmup_s
    deadline = warmup_until + duration_s
    result = LoadResult(concurrency, duration_s)
    await asyncio.gather(
        *(_worker(host, port, request, deadline, result, warmup_until) for _ in range(concurrency))
    )
    return result
