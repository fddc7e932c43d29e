"""The one boundary between the gateway and model servers: ``Upstream.post``.

Everything the gateway sends upstream goes through this small interface, so a
test or the twin can stand in for the network. The production implementation
is a pooled aiohttp client (keep-alive, bounded connections per backend).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp

__all__ = [
    "AiohttpUpstream",
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

    def lines(self) -> AsyncIterator[bytes]:
        """The body line by line, each with its line ending."""
        ...

    def close(self) -> None:
        """Drop the connection: a model server aborts the generation it was streaming."""
        ...


class Upstream(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send a POST; returns once the response headers arrived."""
        ...

    async def aclose(self) -> None: ...


class _AiohttpResponse:
    __slots__ = ("_resp", "content_type", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_type = resp.content_type

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream went silent while sending its response") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamDisconnected(f"upstream connection broke: {exc}") from exc
        finally:
            self._resp.release()

    async def lines(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        while True:
            try:
                line = await content.readline()
            except TimeoutError as exc:
                raise UpstreamTimeout("upstream went silent in the middle of a stream") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamDisconnected(f"upstream connection broke: {exc}") from exc
            if not line:
                return
            yield line

    def close(self) -> None:
        self._resp.close()


class AiohttpUpstream:
    """Pooled HTTP/1.1 client; create it inside the running event loop."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections_per_host: int,
    ) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=max_connections_per_host, keepalive_timeout=30
        )
        timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        try:
            resp = await self._session.post(url, data=body, headers=headers)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamConnectError(f"cannot connect to {url}: {exc.os_error}") from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamConnectError(f"cannot connect to {url}: connect timed out") from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response from {url} within the timeout") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamDisconnected(f"connection to {url} broke: {exc}") from exc
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        await self._session.close()
