"""OpenAI wire format shared by the gateway and the emulated engine."""

from inferplane.wire._errors import OpenAIError, error_body, error_event
from inferplane.wire._sse import DONE, SSE_HEADERS, SSEDecoder, sse_data, sse_payload

__all__ = [
    "DONE",
    "SSE_HEADERS",
    "OpenAIError",
    "SSEDecoder",
    "error_body",
    "error_event",
    "sse_data",
    "sse_payload",
]
