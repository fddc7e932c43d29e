"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` ... ``data: [DONE]``."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["DONE", "SSE_HEADERS", "SSEDecoder", "sse_data", "sse_payload"]

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse_data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class SSEDecoder:
    """Cuts a byte stream into SSE events, whatever the chunk boundaries.

    ``feed`` returns the complete events (each without its closing blank line);
    ``pending`` is what arrived after the last complete one.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self.pending + chunk if self.pending else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = buf.split(b"\n\n")
        self.pending = events.pop()
        return events


def sse_payload(event: bytes) -> bytes:
    """The data of one event: its ``data:`` lines joined, as the SSE spec does."""
    if event.startswith(b"data:") and b"\n" not in event:
        return event[5:].strip()  # the common case: one data line
    return b"\n".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))
