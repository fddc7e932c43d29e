"""Running an ASGI app on uvicorn with the fast loop and parser (uvloop, httptools)."""

from __future__ import annotations

import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve"]


def serve(app: ASGIApp, host: str, port: int, *, log_level: str = "warning") -> None:
    """Serve until SIGINT/SIGTERM, then drain gracefully. Blocks."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        # Client keep-alive well above typical SDK pool idle times.
        timeout_keep_alive=30,
        backlog=4096,
        # No reverse proxy in front by default: skip parsing X-Forwarded-* on every request.
        proxy_headers=False,
    )
    uvicorn.Server(config).run()
