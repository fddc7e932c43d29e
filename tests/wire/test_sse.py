"""SSE framing: events survive any chunking of the byte stream."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from inferplane.wire import SSEDecoder, sse_data, sse_payload

EVENTS = [sse_data({"i": i, "text": "a\\nb"}) for i in range(5)] + [b"data: [DONE]\n\n"]
STREAM = b"".join(EVENTS)


@given(st.lists(st.integers(0, len(STREAM)), max_size=20))
def test_events_are_the_same_whatever_the_chunk_boundaries(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    decoder = SSEDecoder()
    events = [e for a, b in itertools.pairwise(bounds) for e in decoder.feed(STREAM[a:b])]
    assert [e + b"\n\n" for e in events] == EVENTS
    assert decoder.pending == b""


def test_crlf_line_endings_and_multi_line_data() -> None:
    events = SSEDecoder().feed(b': keep-alive\r\n\r\ndata: {"a":\r\ndata: 1}\r\n\r\n')
    assert [sse_payload(e) for e in events] == [b"", b'{"a":\n1}']
