"""The one boundary between the gateway and model servers: ``Upstream.post``.

Everything the gateway sends upstream goes through this small interface, so a
test or the twin can stand in for the network. The production implementation
is ``Http1Upstream`` (``_http1.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

__all__ = [
    "Upstream",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
]


class UpstreamError(Exception):
    """The upstream could not be used; ``str()`` says why in one line."""


class UpstreamConnectError(UpstreamError):
    """No connection: nothing reached the backend, so trying another one is safe."""


class UpstreamTimeout(UpstreamError):
    """The backend went silent for longer than the read timeout."""


class UpstreamDisconnected(UpstreamError):
    """The connection broke after the request was sent."""


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body in pieces as they arrive."""
        ...

    def close(self) -> None:
        """Drop the connection: a model server aborts the generation it was streaming."""
        ...


class Upstream(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send a POST; returns once the response headers arrived."""
        ...

    async def aclose(self) -> None: ...
