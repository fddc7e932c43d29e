"""Active health checks: ``GET /health`` on every backend now and then (vLLM, SGLang,
TGI and llama.cpp all serve it); the outcome feeds the backend's breaker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from inferplane.policy import Health

__all__ = ["check_forever", "probe"]

log = logging.getLogger("inferplane.gateway")


async def probe(url: str, timeout_s: float) -> bool:
    """Does ``url``/health answer 200 within ``timeout_s``?"""
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if tls else 80)
    path = (parts.path.rstrip("/") or "") + "/health"
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port, ssl=tls or None)
            writer.write(
                f"GET {path} HTTP/1.1\r\nhost: {parts.netloc}\r\nconnection: close\r\n\r\n".encode()
            )
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
    fields = status_line.split()
    return len(fields) >= 2 and fields[1] == b"200"


async def check_forever(
    targets: Iterable[tuple[Health, int, str]], interval_s: float, timeout_s: float
) -> None:
    """Every ``interval_s``, probe each (health, index, url) at once and report it."""
    targets = list(targets)
    while True:
        await asyncio.sleep(interval_s)
        results = await asyncio.gather(*(probe(url, timeout_s) for _, _, url in targets))
        now = time.monotonic()
        for (health, index, url), ok in zip(targets, results, strict=True):
            if not ok:
                log.warning("health check of %s failed", url)
            health.checked(index, ok, now)
