"""The production ``Upstream``: pooled keep-alive HTTP/1.1 over asyncio, parsed by httptools.

Why not aiohttp or httpx: a py-spy profile of the gateway under load put 40%
of its CPU inside aiohttp's client (request object, header handling, stream
reader), for a job that is always the same: one POST with a JSON body to a
model server on a private network, then a fixed-length or chunked answer.
httptools (the C parser uvicorn uses) parses the answer; this module only
pools connections, writes requests and hands body chunks over as they arrive.

Pool rules: a connection is reused only after its response was read to the
end and the server allowed keep-alive; one idle for longer than
``idle_timeout_s`` (below uvicorn's default keep-alive of 5 s) is closed
rather than risk a race with the server closing it. A reused connection
that breaks before any byte of the answer is retried once on a fresh one.
At most ``max_connections_per_host`` exchanges per host at once, so at most that
many connections: a slot is taken before a connection and freed only when its
response is finished with (read to the end, closed, or failed).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from inferplane.gateway._upstream import (
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

__all__ = ["Http1Upstream"]

# Pause reading a stream when this many chunks wait for a slow client (backpressure).
_HIGH_WATER = 64


class _Connection(asyncio.Protocol):
    """One TCP connection and the response currently being read on it."""

    def __init__(self, key: tuple[str, int, bool], read_timeout_s: float) -> None:
        self.key = key
        self.read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.reset()

    def reset(self) -> None:
        """Forget the last response, before the connection carries the next request."""
        self.status = 0
        self.content_type = ""
        self.keep_alive = False
        self.headers_done = False
        self.message_done = False
        self.got_bytes = False
        self._length_known = False
        self._chunks: deque[bytes] = deque()
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._timeout_hit = False

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamDisconnected(f"upstream sent malformed HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self._length_known and not self.message_done:
            self.on_message_complete()  # a body delimited by the end of the connection
        elif not self.message_done:
            self._fail(UpstreamDisconnected("upstream closed the connection mid-response"))

    # -- httptools callbacks -------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self.content_type = value.split(b";", 1)[0].strip().decode("latin-1").lower()
        elif lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._length_known = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        if self.status in (204, 304) or 100 <= self.status < 200:
            self._length_known = True
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if len(self._chunks) >= _HIGH_WATER and not self._paused and self.transport:
            self.transport.pause_reading()
            self._paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.message_done = True
        self._wake()

    # -- waiting -------------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        self._error = error
        self._wake()

    async def wait(self, what: str) -> None:
        """Wait for the next parser progress, at most the read timeout."""
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self.read_timeout_s, self._timed_out, self._waiter)
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None:
            raise self._error
        if self._timeout_hit:
            raise UpstreamTimeout(f"upstream sent nothing for {self.read_timeout_s:g}s {what}")

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._timeout_hit = True
            waiter.set_result(None)

    @property
    def has_chunks(self) -> bool:
        return bool(self._chunks)

    def take_chunks(self) -> list[bytes]:
        chunks = list(self._chunks)
        self._chunks.clear()
        if self._paused and self.transport is not None:
            self.transport.resume_reading()
            self._paused = False
        return chunks

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Response:
    """The answer on one pooled connection; given back to the pool once fully read.

    It holds its host's connection slot until it is finished with (read to the end,
    or closed): a stream keeps its connection open long after its headers.
    """

    __slots__ = ("_conn", "_done", "_pool", "_slot", "content_type", "status")

    def __init__(self, conn: _Connection, pool: Http1Upstream, slot: asyncio.Semaphore) -> None:
        self._conn = conn
        self._pool = pool
        self._slot = slot
        self._done = False
        self.status = conn.status
        self.content_type = conn.content_type

    def _finish(self, reuse: bool) -> None:
        """Pool or drop the connection and free the slot, exactly once."""
        if self._done:
            return
        self._done = True
        if reuse:
            self._pool.release(self._conn)
        else:
            self._conn.close()
        self._slot.release()

    async def read(self) -> bytes:
        conn = self._conn
        try:
            while not conn.message_done:
                await conn.wait("while sending its response")
        except BaseException:
            self.close()
            raise
        body = b"".join(conn.take_chunks())
        self._finish(reuse=True)
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        try:
            while True:
                for chunk in conn.take_chunks():
                    yield chunk
                # More may have arrived while the consumer held the last piece, the end of
                # the message included: deliver it before deciding to stop or to wait.
                if conn.has_chunks:
                    continue
                if conn.message_done:
                    break
                await conn.wait("in the middle of a stream")
        except BaseException:
            self.close()  # a no-op once finished: the connection may serve another request
            raise
        self._finish(reuse=True)

    def close(self) -> None:
        if self._done:
            return
        reuse = self._conn.message_done and not self._conn.closed
        if reuse:
            self._conn.take_chunks()  # e.g. the end of a stream after its [DONE]
        # Otherwise the connection closes: the server sees the client leave and stops.
        self._finish(reuse)

    def __del__(self) -> None:
        # A response dropped unfinished (a caller's bug) must not hold its slot for good.
        if not self._done:
            self._done = True
            self._slot.release()
            self._conn.close()


class Http1Upstream:
    """Keep-alive connection pool per (host, port, tls); create it inside the event loop."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections_per_host: int,
        idle_timeout_s: float = 4.0,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections_per_host = max_connections_per_host
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._slots: dict[tuple[str, int, bool], asyncio.Semaphore] = {}
        self._targets: dict[str, tuple[tuple[str, int, bool], bytes]] = {}
        self._tls: ssl.SSLContext | None = None

    def _target(self, url: str) -> tuple[tuple[str, int, bool], bytes]:
        """(pool key, request-line prefix) of a URL, parsed once per distinct URL."""
        cached = self._targets.get(url)
        if cached is None:
            parts = urlsplit(url)
            tls = parts.scheme == "https"
            host = parts.hostname or "localhost"
            key = (host, parts.port or (443 if tls else 80), tls)
            path = parts.path or "/"
            head = f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\n".encode()
            cached = self._targets[url] = (key, head)
        return cached

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        key, head = self._target(url)
        request = b"".join(
            (
                head,
                "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"),
                b"content-length: %d\r\n\r\n" % len(body),
                body,
            )
        )
        slot = self._slots.get(key)
        if slot is None:
            # Bounded: releasing one slot twice is a bug, and raises rather than lifting the cap.
            slot = self._slots[key] = asyncio.BoundedSemaphore(self.max_connections_per_host)
        # Held until the response is finished with, not only until its headers: a stream
        # keeps its connection busy, and the limit is on connections.
        await slot.acquire()
        try:
            conn = await self._acquire(key, url)
            try:
                return await self._exchange(conn, request, url, slot)
            except UpstreamDisconnected:
                if not (conn.reused and not conn.got_bytes):
                    raise
            # The server closed a kept-alive connection as we reused it: nothing was
            # processed, so one fresh attempt is safe.
            return await self._exchange(await self._connect(key, url), request, url, slot)
        except BaseException:
            slot.release()  # no response took the slot over (failure, cancellation)
            raise

    async def _exchange(
        self, conn: _Connection, request: bytes, url: str, slot: asyncio.Semaphore
    ) -> _Response:
        assert conn.transport is not None
        conn.transport.write(request)
        try:
            while not conn.headers_done:
                await conn.wait(f"after the request to {url}")
        except BaseException:
            conn.close()
            raise
        return _Response(conn, self, slot)

    async def _acquire(self, key: tuple[str, int, bool], url: str) -> _Connection:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self.idle_timeout_s:
                conn.reused = True
                return conn
            conn.close()
        return await self._connect(key, url)

    async def _connect(self, key: tuple[str, int, bool], url: str) -> _Connection:
        host, port, tls = key
        if tls and self._tls is None:
            self._tls = ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(key, self.read_timeout_s),
                    host,
                    port,
                    ssl=self._tls if tls else None,
                )
        except TimeoutError as exc:
            raise UpstreamConnectError(f"cannot connect to {url}: connect timed out") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {url}: {exc.strerror or exc}") from exc
        return conn

    def release(self, conn: _Connection) -> None:
        if conn.closed or not conn.keep_alive:
            conn.close()
            return
        conn.reset()
        conn.reused = False
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
