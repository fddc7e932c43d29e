"""Http1Upstream against real sockets on loopback: pooling, framing, slow consumers."""

from __future__ import annotations

import asyncio

from inferplane.gateway import Http1Upstream


async def serve(handler_bytes: list[bytes], pause_s: float) -> tuple[asyncio.Server, int]:
    """A server answering every request with ``handler_bytes``, written with pauses."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                for piece in handler_bytes:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(pause_s)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


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
        await upstream.aclose()
        server.close()
        await server.wait_closed()


async def test_pieces_written_with_pauses_arrive_in_order() -> None:
    parts = [b"data: %d\n\n" % i for i in range(10)]
    server, port = await serve(chunked(*parts), pause_s=0.005)
    upstream = Http1Upstream(connect_timeout_s=2, read_timeout_s=2, max_connections_per_host=4)
    try:
        resp = await upstream.post(f"http://127.0.0.1:{port}/v1/x", b"{}", {})
        assert b"".join([p async for p in resp.chunks()]) == b"".join(parts)
    finally:
        await upstream.aclose()
        server.close()
        await server.wait_closed()
