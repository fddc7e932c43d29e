"""ASGI middleware of the gateway; each wraps an app and is itself an app."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestIdMiddleware"]

_MAX_ID = 128


class RequestIdMiddleware:
    """Every HTTP response carries ``x-request-id``: the client's own when sane, else a new one.

    It sits outermost, so even the 500 of an unexpected error carries the id.
    The id is left in ``scope["state"]["request_id"]`` for handlers and logs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if 0 < len(value) <= _MAX_ID and value.isascii() and value.decode().isprintable():
                    request_id = value
                break
        if request_id is None:
            request_id = uuid.uuid4().hex.encode()
        scope.setdefault("state", {})["request_id"] = request_id.decode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id)]
            await send(message)

        await self.app(scope, receive, send_with_id)
