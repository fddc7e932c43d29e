"""The gateway's ASGI app: OpenAI routes in front of the configured backends."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inferplane.config import Config
from inferplane.gateway._auth import KeyRing, Principal
from inferplane.gateway._middleware import RequestIdMiddleware
from inferplane.gateway._proxy import ModelRoute, Proxy
from inferplane.gateway._upstream import AiohttpUpstream, Upstream
from inferplane.telemetry import GatewayMetrics
from inferplane.wire import OpenAIError

__all__ = ["create_gateway_app"]

log = logging.getLogger("inferplane.gateway")

# OpenAI operation names (gen_ai.operation.name) by route.
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class Gateway:
    def __init__(self, config: Config, upstream: Upstream | None = None) -> None:
        self.config = config
        self.keys = KeyRing(config)
        settings = config.gateway
        self.routes = {
            name: ModelRoute.from_config(name, model, settings.backend_cooldown_s)
            for name, model in config.models.items()
        }
        self.metrics = GatewayMetrics(tuple(config.models), tuple(config.tenants))
        self._upstream = upstream
        self.proxy: Proxy | None = None

    async def start(self) -> None:
        s = self.config.gateway
        upstream = self._upstream or AiohttpUpstream(
            connect_timeout_s=s.connect_timeout_s,
            read_timeout_s=s.read_timeout_s,
            max_connections_per_host=s.max_connections_per_backend,
        )
        self.proxy = Proxy(upstream, self.metrics)

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.upstream.aclose()

    # -- routes ------------------------------------------------------------

    async def generate(self, request: Request) -> Response:
        """chat/completions, completions and embeddings: auth, validate, forward."""
        principal = self.keys.authenticate(request.headers.get("authorization"))
        raw = await _read_body(request, self.config.gateway.max_body_bytes)
        body = _parse_json(raw)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError(
                400, "'model' is required and must be a string.", "missing_model", param="model"
            )
        route = self.routes.get(model)
        if route is None:
            raise OpenAIError(
                404,
                f"The model '{model}' does not exist. Known models: "
                f"{', '.join(sorted(self.routes))}.",
                "model_not_found",
                param="model",
            )
        self._check_allowed(principal, model)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise OpenAIError(400, "'stream' must be a boolean.", "invalid_value", param="stream")
        path = request.url.path
        labels = self.metrics.labels(model, _OPERATIONS[path], principal.tenant)
        assert self.proxy is not None, "gateway not started"
        return await self.proxy.forward(route, path, body, raw, labels)

    def _check_allowed(self, principal: Principal, model: str) -> None:
        if principal.is_admin:
            return
        allowed = self.config.tenants[principal.tenant].models
        if allowed is not None and model not in allowed:
            raise OpenAIError(
                403,
                f"Tenant '{principal.tenant}' may not use model '{model}'.",
                "model_not_allowed",
                param="model",
            )

    async def models(self, request: Request) -> Response:
        principal = self.keys.authenticate(request.headers.get("authorization"))
        allowed = None if principal.is_admin else self.config.tenants[principal.tenant].models
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "inferplane"}
            for name in self.routes
            if allowed is None or name in allowed
        ]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = OpenAIError(
        413,
        f"Request body is larger than the gateway's limit of {limit} bytes.",
        "request_too_large",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OpenAIError(
            400, f"We could not parse the JSON body of your request: {exc}", "invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.", "invalid_json")
    return body


async def _openai_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    body = OpenAIError(500, "The gateway hit an internal error.", "internal_error").body()
    return Response(body, status_code=500, media_type="application/json")


async def _not_found(request: Request, exc: Exception) -> Response:
    err = OpenAIError(404, f"Unknown route {request.method} {request.url.path}.", "unknown_route")
    return Response(err.body(), status_code=404, media_type="application/json")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    err = OpenAIError(
        405, f"Method {request.method} is not allowed on {request.url.path}.", "method_not_allowed"
    )
    return Response(err.body(), status_code=405, media_type="application/json")


def create_gateway_app(config: Config, upstream: Upstream | None = None) -> RequestIdMiddleware:
    """The gateway as an ASGI app; ``upstream`` replaces the HTTP client (tests, twin)."""
    gateway = Gateway(config, upstream)
    disable_created_metrics()  # the *_created series only add noise to every scrape

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    routes = [Route(path, gateway.generate, methods=["POST"]) for path in _OPERATIONS] + [
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/health", gateway.health, methods=["GET"]),
        Route("/metrics", gateway.prometheus, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            OpenAIError: _openai_error,
            404: _not_found,
            405: _method_not_allowed,
            Exception: _internal_error,
        },
    )
    app.state.gateway = gateway
    return RequestIdMiddleware(app)
