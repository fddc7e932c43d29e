"""The live gateway: OpenAI-compatible front door over real model servers."""

from inferplane.gateway._app import LEDGER_FILE, create_gateway_app, ledger_database
from inferplane.gateway._auth import hash_key
from inferplane.gateway._http1 import Http1Upstream
from inferplane.gateway._upstream import Upstream, UpstreamError, UpstreamResponse

__all__ = [
    "LEDGER_FILE",
    "Http1Upstream",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "create_gateway_app",
    "hash_key",
    "ledger_database",
]
