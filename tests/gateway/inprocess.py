"""A gateway in this process over a stand-in ``Upstream`` (the model servers), for what
real servers cannot be made to do on cue: answer after set delays, misbehave in one
precise way, or a client that leaves at one precise moment. Usage rows are kept in
memory (``Rows``) to be read back as the gateway wrote them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import httpx
import orjson

from inferplane.config import parse_config
from inferplane.gateway import create_gateway_app
from inferplane.ledger import Charge, UsageEvent

KEY = "sk-in-process-test"
MODEL = "m"


class Rows:
    """A ledger that keeps the usage rows and their charges in memory."""

    def __init__(self) -> None:
        self.rows: list[UsageEvent] = []
        self.charges: list[Charge] = []

    def append(self, event: UsageEvent, charge: Charge) -> asyncio.Future[None]:
        self.rows.append(event)
        self.charges.append(charge)
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def close(self) -> None:
        pass


class StandIn(Protocol):
    async def aclose(self) -> None: ...


class Harness:
    def __init__(self, text: str, upstream: StandIn) -> None:
        self.app = create_gateway_app(parse_config(text), upstream)  # type: ignore[arg-type]
        self.gateway = self.app.state["gateway"]
        self.upstream = upstream
        self.rows = Rows()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://gateway",
            headers={"authorization": f"Bearer {KEY}"},
            timeout=30,
        )

    async def __aenter__(self) -> Harness:
        await self.gateway.start()
        self.gateway.proxy.ledger = self.rows
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()
        await self.gateway.stop()

    async def ask(self, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        """A chat completion of ``body`` (model and a message filled in)."""
        request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **body}
        return await self.http.post("/v1/chat/completions", json=request, headers=headers or {})

    async def metric(self, name: str) -> float:
        """The sum of the series of ``name`` (with labels: that one series)."""
        text = (await self.http.get("/metrics")).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name if name.endswith("}") else (name + "{", name + " "))
        )

    async def raw(
        self,
        body: dict[str, Any],
        disconnect: asyncio.Event,
        on_send: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> list[dict[str, Any]]:
        """Call the ASGI app as a server would; the client hangs up once ``disconnect``
        is set. Returns the messages the app sent."""
        raw = orjson.dumps(body)
        sent: list[dict[str, Any]] = []
        read = False

        async def receive() -> dict[str, Any]:
            nonlocal read
            if not read:
                read = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if on_send is not None:
                await on_send(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"authorization", f"Bearer {KEY}".encode()),
                (b"content-type", b"application/json"),
                *(headers or []),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("gateway", 80),
        }
        await self.app(scope, receive, send)
        return sent
