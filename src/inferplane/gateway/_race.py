"""Attempts at a backend, taken as far as their first byte, and racing two of them (a hedge).

An attempt is one POST to one backend, followed until its *first byte*: for a
whole answer, the answer itself; for a primed stream, its first event that
carries output (vLLM and the emulator may open with a role-only event before
any token, which says nothing about how soon the tokens come), read and held
back. Nothing of an attempt reaches the client before it won, so a loser can
be dropped safely: cancelling it closes its connection, and the model server
aborts the generation (vLLM does on a client's disconnect; so does the
emulator).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from inferplane.gateway._upstream import UpstreamResponse
from inferplane.wire import OpenAIError, SSEDecoder, sse_payload

__all__ = ["Attempt", "Primed", "discard", "first_answer", "prime_stream"]


@dataclass(slots=True)
class Attempt:
    """One POST to backend ``index`` and how far it got: a response (``resp``, and
    ``answer`` for a whole one), or a ``failure`` after which another backend may try."""

    index: int
    sent_at: float  # perf_counter when it was sent
    resp: UpstreamResponse | None = None
    answer: bytes | None = None
    failure: OpenAIError | None = None
    answered_5xx: bool = False
    first_byte_s: float | None = None  # from sent_at to its first byte


class Primed:
    """A stream whose first pieces were read already (up to its first token): replays
    them, then passes the rest through."""

    __slots__ = ("_head", "_resp", "_rest", "content_type", "status")

    def __init__(
        self, resp: UpstreamResponse, head: list[bytes], rest: AsyncIterator[bytes]
    ) -> None:
        self._resp = resp
        self._head = head
        self._rest = rest
        self.status = resp.status
        self.content_type = resp.content_type

    async def read(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        head, self._head = self._head, []
        for piece in head:
            yield piece
        async for piece in self._rest:
            yield piece

    def close(self) -> None:
        self._resp.close()


async def prime_stream(resp: UpstreamResponse) -> Primed:
    """Read ``resp`` up to its first event with output (or an error, or its end)."""
    pieces = resp.chunks()
    decoder = SSEDecoder()
    head: list[bytes] = []
    async for piece in pieces:
        head.append(piece)
        if any(_has_output(sse_payload(event)) for event in decoder.feed(piece)):
            break
    return Primed(resp, head, pieces)


def _has_output(data: bytes) -> bool:
    """Is this event more than a preamble (a role-only or empty delta)?"""
    if not data:
        return False  # a comment, a keep-alive
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return True  # [DONE], or something the relay will call malformed
    if not isinstance(chunk, dict) or "error" in chunk:
        return True
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return True
    choice = choices[0]
    if choice.get("finish_reason") is not None or choice.get("text"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and bool(delta.get("content") or delta.get("tool_calls"))


async def first_answer(tasks: dict[asyncio.Task[Attempt], int]) -> Attempt:
    """The first attempt of ``tasks`` to answer (ties: the lower backend index); when
    none does, the last failure, or the first exception raised. Leaves the others
    running: the caller ``discard``s them."""
    pending = set(tasks)
    failed: Attempt | None = None
    error: BaseException | None = None
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in sorted(done, key=lambda t: tasks[t]):
            exc = task.exception()
            if exc is not None:
                error = error or exc
                continue
            attempt = task.result()
            if attempt.failure is None:
                return attempt
            failed = attempt
    if failed is not None:
        return failed
    assert error is not None
    raise error


def discard(task: asyncio.Task[Attempt]) -> None:
    """Stop a losing attempt: cancel it (its connection closes), or close what it got."""
    if task.done():
        _close(task)
    else:
        task.cancel()
        task.add_done_callback(_close)


def _close(task: asyncio.Task[Attempt]) -> None:
    if task.cancelled() or task.exception() is not None:
        return  # retrieved, so asyncio does not log it
    resp = task.result().resp
    if resp is not None:
        resp.close()
