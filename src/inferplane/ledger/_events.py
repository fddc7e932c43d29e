"""What the gateway records about every request it forwarded."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["UsageEvent"]


class UsageEvent(NamedTuple):
    """One forwarded request, as it ended. Token counts are None when unknown.

    A named tuple: one is made per request, and it is the database row as it is."""

    request_id: str
    time: float  # unix seconds when the request arrived
    tenant: str
    key_name: str
    workflow: str | None
    run: str | None
    model: str  # logical model
    backend: str | None  # the replica that answered, None if none was reached
    operation: str  # chat, text_completion, embeddings
    status: int  # HTTP status the client got (200 also for streams cut by an error event)
    error_type: str | None
    input_tokens: int | None
    output_tokens: int | None
    ttft_s: float | None
    duration_s: float
    calls: int  # model calls that reached a backend (0 or 1)
    cost_micros: int  # US dollars x 1e6, from the model's price
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache
    finish_reason: str | None = None  # stop, length, ... as the answer ended
    retries: int = 0  # attempts on other backends after the first failed
    slo_class: str | None = None
    client_request_id: str | None = None  # the client's own id for it, if it sent one
