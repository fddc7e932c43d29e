"""The live gateway: OpenAI-compatible front door over real model servers."""

from inferplane.gateway._app import create_gateway_app
from inferplane.gateway._auth import hash_key
from inferplane.gateway._upstream import AiohttpUpstream, Upstream, UpstreamResponse

__all__ = ["AiohttpUpstream", "Upstream", "UpstreamResponse", "create_gateway_app", "hash_key"]
