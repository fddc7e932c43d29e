"""Http1Upstream against real sockets on loopback: pooling, framing, slow consumers."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from inferplane.gateway import Http1Upstream
from inferplane.gateway._upstream import UpstreamTimeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Conns:
    """Connections a test server accepted, holds open now, and held at most at once."""

    def __init__(self) -> None:
        self.accepted = 0
        self.open = 0
        self.peak = 0


# The connection handlers of each server, awaited by ``stop``.
_HANDLERS: dict[asyncio.Server, set[asyncio.Task[None]]] = {}


async def listen(handler: Handler, conns: Conns | None = None) -> tuple[asyncio.Server, int]:
    """A server calling ``handler(reader, writer, n)`` for its ``n``-th connection (from 1)."""
    conns = conns or Conns()
    handlers: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(cast("asyncio.Task[None]", asyncio.current_task()))
        conns.accepted += 1
        conns.open += 1
        conns.peak = max(conns.peak, conns.open)
        try:
            await handler(reader, writer, conns.accepted)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            conns.open -= 1
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    _HANDLERS[server] = handlers
    return server, server.sockets[0].getsockname()[1]


async def stop(server: asyncio.Server, upstream: Http1Upstream) -> None:
    """Close the pool, then wait for the server to see every connection end: a connection
    the client leaked open would hang here (the timeout is a hang guard)."""
    await upstream.aclose()
    server.close()
    await asyncio.wait_for(asyncio.gather(*_HANDLERS.pop(server)), timeout=10)
    await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    await reader.readexactly(length)


async def answer(writer: asyncio.StreamWriter, pieces: list[bytes], pause_s: float) -> None:
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(pause_s)


async def serve(
    handler_bytes: list[bytes], pause_s: float, conns: Conns | None = None
) -> tuple[asyncio.Server, int]:
    """A server answering every request with ``handler_bytes``, written with pauses."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await read_request(reader)
            await answer(writer, handler_bytes, pause_s)

    return await listen(handle, conns)


def chunked(*parts: bytes) -> list[bytes]:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    body = [b"%x\r\n%s\r\n" % (len(p), p) for p in parts]
    return [head, *body, b"0\r\n\r\n"]


async def test_a_slow_reader_gets_every_byte_even_when_the_end_arrives_while_it_waits() -> None:
    parts = [b"data: %d\n\n" % i for i in range(20)] + [b"data: [DONE]\n\n"]
    # Two writes: the second, with the end of the message, arrives while the consumer
    # is still busy with the first.
    pieces = chunked(*parts)
    server, port = await serve([b"".join(pieces[:2]), b"".join(pieces[2:])], pause_s=0.002)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=4)
    try:
        for _ in range(3):  # also over a reused connection
            resp = await upstream.post(f"http://127.0.0.1:{port}/v1/x", b"{}", {})
            received = []
            async for piece in resp.chunks():
                received.append(piece)
                await asyncio.sleep(0.01)  # a slow client downstream
            assert b"".join(received) == b"".join(parts)
    finally:
        await stop(server, upstream)


async def test_pieces_written_with_pauses_arrive_in_order() -> None:
    parts = [b"data: %d\n\n" % i for i in range(10)]
    server, port = await serve(chunked(*parts), pause_s=0.005)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=4)
    try:
        resp = await upstream.post(f"http://127.0.0.1:{port}/v1/x", b"{}", {})
        assert b"".join([p async for p in resp.chunks()]) == b"".join(parts)
    finally:
        await stop(server, upstream)


# -- max_connections_per_host: a slot is held until the response is finished with ------


def whole(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def test_concurrent_streams_never_hold_more_connections_than_the_limit() -> None:
    parts = [b"data: %d\n\n" % i for i in range(5)]
    conns = Conns()
    server, port = await serve(chunked(*parts), pause_s=0.01, conns=conns)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=2)

    async def stream() -> bytes:
        resp = await upstream.post(f"http://127.0.0.1:{port}/v1/x", b"{}", {})
        return b"".join([p async for p in resp.chunks()])

    try:
        bodies = await asyncio.gather(*(stream() for _ in range(6)))
        assert bodies == [b"".join(parts)] * 6
        # The streams took turns on two kept-alive connections.
        assert conns.peak <= 2
        assert conns.accepted <= 2
    finally:
        await stop(server, upstream)


async def test_a_stream_the_client_gives_up_on_midway_frees_its_slot() -> None:
    parts = [b"data: %d\n\n" % i for i in range(40)]
    server, port = await serve(chunked(*parts), pause_s=0.005)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=1)
    url = f"http://127.0.0.1:{port}/v1/x"
    try:
        resp = await upstream.post(url, b"{}", {})
        pieces = resp.chunks()
        await anext(pieces)
        resp.close()  # the client left after the first piece
        await pieces.aclose()
        # With the slot still held, this would wait forever (the timeout is a hang guard).
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert b"".join([p async for p in resp.chunks()]) == b"".join(parts)
    finally:
        await stop(server, upstream)


async def test_responses_read_to_the_end_give_back_their_connection_and_slot() -> None:
    parts = [b"data: %d\n\n" % i for i in range(3)]
    conns = Conns()
    server, port = await serve(chunked(*parts), pause_s=0.002, conns=conns)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=1)
    url = f"http://127.0.0.1:{port}/v1/x"
    try:
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert await resp.read() == b"".join(parts)
        resp.close()  # after the end: a no-op
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert b"".join([p async for p in resp.chunks()]) == b"".join(parts)
        resp.close()
        assert conns.accepted == 1  # one kept-alive connection served both
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        resp.close()  # before reading anything
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert await resp.read() == b"".join(parts)
    finally:
        await stop(server, upstream)


async def test_cancelling_a_request_that_waits_for_its_headers_frees_its_slot() -> None:
    asked = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        if n == 1:
            asked.set()
            await reader.read()  # never answers; waits for the client to leave
            return
        await answer(writer, [whole(b"ok")], 0)
        await reader.read()

    server, port = await listen(handle)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=30, max_connections_per_host=1)
    url = f"http://127.0.0.1:{port}/v1/x"
    try:
        waiting = asyncio.create_task(upstream.post(url, b"{}", {}))
        await asyncio.wait_for(asked.wait(), timeout=10)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert await resp.read() == b"ok"
    finally:
        await stop(server, upstream)


async def test_cancelling_a_request_queued_for_a_slot_takes_no_slot_with_it() -> None:
    parts = [b"data: %d\n\n" % i for i in range(40)]
    conns = Conns()
    server, port = await serve(chunked(*parts), pause_s=0.005, conns=conns)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=1)
    url = f"http://127.0.0.1:{port}/v1/x"
    try:
        holder = await upstream.post(url, b"{}", {})
        queued = asyncio.create_task(upstream.post(url, b"{}", {}))
        await asyncio.sleep(0)  # it waits for the slot the stream holds
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert b"".join([p async for p in holder.chunks()]) == b"".join(parts)
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert b"".join([p async for p in resp.chunks()]) == b"".join(parts)
        assert conns.accepted == 1
    finally:
        await stop(server, upstream)


@pytest.mark.parametrize("whole_body", [True, False], ids=["read", "chunks"])
async def test_a_response_that_fails_midway_frees_its_slot(whole_body: bool) -> None:
    head, first, *_ = chunked(b"data: 0\n\n", b"data: 1\n\n")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            if n == 1:
                await answer(writer, [head, first], 0)
                await reader.read()  # then silence, until the client gives up
                return
            await answer(writer, [whole(b"ok")], 0)

    server, port = await listen(handle)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=0.2, max_connections_per_host=1)
    url = f"http://127.0.0.1:{port}/v1/x"
    try:
        resp = await upstream.post(url, b"{}", {})
        with pytest.raises(UpstreamTimeout):
            if whole_body:
                await resp.read()
            else:
                async for _ in resp.chunks():
                    pass
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert await resp.read() == b"ok"
    finally:
        await stop(server, upstream)


async def test_the_retry_on_a_stale_kept_alive_connection_holds_one_slot() -> None:
    conns = Conns()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        await answer(writer, [whole(b"ok")], 0)
        await read_request(reader)
        if n == 1:
            return  # closes as the client reuses it, without a byte of the answer
        await answer(writer, [whole(b"ok")], 0)
        while True:
            await read_request(reader)
            await answer(writer, [whole(b"ok")], 0)

    server, port = await listen(handle, conns)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=1)
    url = f"http://127.0.0.1:{port}/v1/x"
    try:
        for _ in range(4):  # the second one is retried on a fresh connection
            resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
            assert await resp.read() == b"ok"
        assert conns.accepted == 2
        assert conns.peak <= 1
    finally:
        await stop(server, upstream)


async def test_a_response_dropped_unfinished_frees_its_slot() -> None:
    parts = [b"data: %d\n\n" % i for i in range(40)]
    server, port = await serve(chunked(*parts), pause_s=0.005)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=1)
    url = f"http://127.0.0.1:{port}/v1/x"
    try:
        resp = await upstream.post(url, b"{}", {})
        del resp  # a caller's bug: neither read nor closed
        gc.collect()
        resp = await asyncio.wait_for(upstream.post(url, b"{}", {}), timeout=10)
        assert b"".join([p async for p in resp.chunks()]) == b"".join(parts)
    finally:
        await stop(server, upstream)
