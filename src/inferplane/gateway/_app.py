"""The gateway's ASGI app: OpenAI routes in front of the configured backends."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, disable_created_metrics, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inferplane.asgi import JsonApp
from inferplane.config import Config
from inferplane.gateway._admin import AdminApi
from inferplane.gateway._auth import Principal, Registry
from inferplane.gateway._budgets import BudgetGate, choices_of, worst_case
from inferplane.gateway._http1 import Http1Upstream
from inferplane.gateway._probe import Target, check_forever
from inferplane.gateway._proxy import Exchange, ModelRoute, Proxy
from inferplane.gateway._queue import CLASS_HEADER, ModelQueue, TenantWeights
from inferplane.gateway._upstream import Upstream
from inferplane.ledger import (
    GROUPS,
    Database,
    LeaseStore,
    Ledger,
    NullLedger,
    SqlLedger,
    TenantStore,
    usage_summary,
)
from inferplane.policy import RoutingMode
from inferplane.telemetry import GatewayMetrics
from inferplane.wire import OpenAIError

__all__ = ["LEDGER_FILE", "create_gateway_app", "ledger_database"]

LEDGER_FILE = "ledger.sqlite3"
SESSION_HEADER = "x-inferplane-session"
log = logging.getLogger("inferplane.gateway")


def ledger_database(config: Config) -> Database:
    """The database of the ledger, tenants and budgets: ``database_url`` or SQLite."""
    if config.database_url is not None:
        return Database(config.database_url)
    return Database.sqlite(config.data_dir / LEDGER_FILE)


# Refusals after which a request may go on to the next model of its fallback chain:
# the client has nothing yet (no backend took it, its class could not be served in time,
# every backend answered a server error or dropped the connection before answering).
_FALLBACK_CODES = frozenset(
    {"upstream_unreachable", "slo_unattainable", "upstream_error", "upstream_disconnected"}
)

# OpenAI operation names (gen_ai.operation.name) by route.
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class Gateway:
    def __init__(self, config: Config, upstream: Upstream | None = None) -> None:
        self.config = config
        settings = config.gateway
        self.routes = {
            name: ModelRoute.from_config(name, model, settings)
            for name, model in config.models.items()
        }
        self.metrics = GatewayMetrics(tuple(config.models), tuple(config.tenants))
        self.queues: dict[str, ModelQueue] = {}
        self._upstream = upstream
        self.proxy: Proxy | None = None
        self.gate: BudgetGate | None = None
        self.registry: Registry | None = None
        self.store: TenantStore | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.config.gateway
        upstream = self._upstream or Http1Upstream(
            connect_timeout_s=s.connect_timeout_s,
            read_timeout_s=s.read_timeout_s,
            max_connections_per_host=s.max_connections_per_backend,
        )
        ledger: Ledger = NullLedger()
        leases = None
        if self.config.usage_ledger:
            database = ledger_database(self.config)
            ledger = SqlLedger(database)
            self.store = TenantStore(database)
            leases = LeaseStore(database)
        self.registry = Registry(self.config, self.store)
        weights = TenantWeights(self.registry.tenants)
        for name, model in self.config.models.items():
            if any(
                b.max_concurrency is not None or b.max_tokens_in_flight is not None
                for b in model.backends
            ):
                health = self.routes[name].router.health
                queue = self.queues[name] = ModelQueue(self.config, name, weights, health)
                for cls in self.config.slo_classes:
                    self.metrics.watch_queue(name, cls, functools.partial(queue.depth, cls))
                for i, backend in enumerate(model.backends):
                    for unit in ("requests", "tokens"):
                        capacity = functools.partial(queue.capacity, i, unit)
                        self.metrics.watch_capacity(name, backend.label, unit, capacity)
        # Unique among live gateways: this host and port (the port is ours while we run).
        port = s.port or f"pid{os.getpid()}"
        self.gate = BudgetGate(self.config, self.registry, leases, f"{socket.gethostname()}:{port}")
        await self.gate.start(time.time())
        self.proxy = Proxy(upstream, self.metrics, ledger, self.gate)
        self._ticker = asyncio.create_task(self._tick(), name="budget-ticker")
        if s.health_check_interval_s > 0:
            targets = []
            for name, route in self.routes.items():
                model_queue = self.queues.get(name)
                for i, backend in enumerate(route.backends):
                    learn = None
                    if model_queue is not None and model_queue.learned[i]:
                        learn = functools.partial(model_queue.learn, i)
                    targets.append(Target(route.router.health, i, backend.url, learn))
            checks = check_forever(targets, s.health_check_interval_s, s.connect_timeout_s)
            self._checker = asyncio.create_task(checks, name="health-checks")

    async def _tick(self) -> None:
        """Budget upkeep, and tenants other gateway processes changed."""
        assert self.gate is not None and self.registry is not None
        interval = min(1.0, self.config.gateway.lease_ttl_s / 6)
        seen = None
        while True:
            await asyncio.sleep(interval)
            await self.gate.tick(time.time())
            if self.store is None:
                continue
            try:
                version = await asyncio.to_thread(self.store.version)
                if version != seen:
                    docs = await asyncio.to_thread(self.store.load)
                    for name in self.registry.take_stored(docs):
                        await self.gate.refresh(name, time.time())
                    seen = version
            except self.store.errors as exc:  # keep serving with what we know
                log.warning("could not read stored tenants: %s", exc)

    def _registry(self) -> Registry:
        assert self.registry is not None, "gateway not started"
        return self.registry

    def _gate_or_fail(self) -> BudgetGate:
        assert self.gate is not None, "gateway not started"
        return self.gate

    async def stop(self) -> None:
        for task in (self._ticker, self._checker):
            if task is not None:
                task.cancel()
        if self.proxy is not None:
            await self.proxy.upstream.aclose()
            self.proxy.ledger.close()  # commits what is queued, so leases are consumed
        if self.gate is not None:
            await self.gate.close()
        if self.store is not None:
            self.store.close()

    # -- routes ------------------------------------------------------------

    async def generate(self, request: Request) -> Response:
        """chat/completions, completions and embeddings: admit at the door, then forward;
        when the model cannot serve it (no backend available, or its class cannot be
        served in time), along the model's fallback chain."""
        assert self.proxy is not None, "gateway not started"
        try:
            principal, body, raw = await self._read(request)
        except OpenAIError as exc:
            self.metrics.refused(exc.code)
            raise
        model = body["model"]
        # A fallback the tenant may not use is skipped: the refusal it would give would
        # hide why the model asked for failed.
        chain = [model] + [
            name for name in self.config.models[model].fallback if self._may_use(principal, name)
        ]
        request_id = request.scope["state"]["request_id"]
        path = request.scope["path"]
        for n, name in enumerate(chain):
            attempt = dict(body, model=name)
            try:
                if n > 0:
                    raw = orjson.dumps(attempt)
                # Each attempt is its own usage row; the client sees the first id.
                attempt_id = request_id if n == 0 else f"{request_id}.{n}"
                route, attempt, raw, exchange = await self._admit(
                    request, principal, attempt, raw, attempt_id
                )
            except OpenAIError as exc:
                self.metrics.refused(exc.code)
                raise
            try:
                return await self.proxy.forward(route, path, attempt, raw, exchange)
            except OpenAIError as exc:
                if exc.code not in _FALLBACK_CODES or n == len(chain) - 1:
                    raise
                log.info("%s: %s; falling back to %s", name, exc.code, chain[n + 1])
        raise AssertionError("the last model of a chain returns or raises")

    async def _read(self, request: Request) -> tuple[Principal, dict[str, Any], bytes]:
        """Authenticate and validate the body; raises the OpenAI error of a refusal."""
        principal = self._registry().authenticate(request.headers.get("authorization"))
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
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise OpenAIError(
                400, "'stream_options' must be an object.", "invalid_value", param="stream_options"
            )
        return principal, body, raw

    async def _admit(
        self,
        request: Request,
        principal: Principal,
        body: dict[str, Any],
        raw: bytes,
        request_id: str,
    ) -> tuple[ModelRoute, dict[str, Any], bytes, Exchange]:
        """Prepare one attempt at ``body["model"]`` (``raw`` is ``body`` serialised): its
        class, route and budget hold."""
        model = body["model"]
        route = self.routes[model]
        operation = _OPERATIONS[request.scope["path"]]
        slo_class = request.headers.get(CLASS_HEADER) or principal.slo_class
        slo_class = slo_class or self.config.default_slo_class
        if slo_class not in self.config.slo_classes:
            raise OpenAIError(
                400,
                f"Unknown SLO class {slo_class[:40]!r}; this gateway has "
                f"{', '.join(sorted(self.config.slo_classes))}.",
                "invalid_header",
                param=CLASS_HEADER,
            )
        assert self.gate is not None, "gateway not started"
        model_config = self.config.models[model]
        class_config = self.config.slo_classes[slo_class]
        exchange = Exchange(
            request_id=request_id,
            client_request_id=request.scope["state"]["client_request_id"],
            principal=principal,
            model=model,
            operation=operation,
            labels=self.metrics.labels(model, operation, principal.tenant),
            charge=self.gate.path(principal, request.headers),
            price=route.price(model_config),
            hourly=route.hourly,
            slo_class=slo_class,
            ttft_target_s=class_config.ttft_s,
            hedge=class_config.hedge and len(route.backends) > 1,
            queue=self.queues.get(model),
            affinity_key=_affinity_key(route.router.mode, body, request.headers),
        )
        budgeted = self.gate.is_budgeted(principal.tenant, principal.key_name)
        if (
            budgeted
            or exchange.queue is not None
            or route.router.mode is not RoutingMode.ROUND_ROBIN
        ):
            worst = worst_case(body, operation, model_config, exchange.price)
            exchange.size_tokens = worst.input_tokens + worst.output_tokens
        if budgeted:
            choices = choices_of(body, operation)
            admission = await self.gate.reserve(
                exchange.request_id,
                exchange.charge,
                worst,
                exchange.price,
                time.time(),
                choices=choices,
                owner=exchange,
            )
            held = exchange.held = admission.held
            exchange.deadline, exchange.deadline_scope = (
                admission.deadline,
                admission.deadline_scope,
            )
            if held.output_tokens < worst.output_tokens:
                # A partial grant: the backend itself stops at what the budget allows.
                exchange.output_cap = held.output_tokens // choices
                field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
                body[field] = exchange.output_cap
                raw = orjson.dumps(body)
        return route, body, raw, exchange

    def _may_use(self, principal: Principal, model: str) -> bool:
        if principal.is_admin:
            return True
        allowed = self._registry().tenants[principal.tenant].models
        return allowed is None or model in allowed

    def _check_allowed(self, principal: Principal, model: str) -> None:
        if not self._may_use(principal, model):
            raise OpenAIError(
                403,
                f"Tenant '{principal.tenant}' may not use model '{model}'.",
                "model_not_allowed",
                param="model",
            )

    async def usage(self, request: Request) -> Response:
        """Usage grouped by scope and day; a tenant's key sees its own tenant only."""
        principal = self._registry().authenticate(request.headers.get("authorization"))
        params = request.query_params
        tenant = params.get("tenant")
        if not principal.is_admin:
            if tenant not in (None, principal.tenant):
                raise OpenAIError(
                    403,
                    "A tenant's key may only read its own usage.",
                    "permission_denied",
                    param="tenant",
                )
            tenant = principal.tenant
        group_by = [g for g in params.get("group_by", "tenant,model,day").split(",") if g]
        unknown = [g for g in group_by if g not in GROUPS]
        if unknown:
            raise OpenAIError(
                400,
                f"Cannot group by {', '.join(unknown)}; choose from {', '.join(GROUPS)}.",
                "invalid_value",
                param="group_by",
            )
        start, end = _time_param(params, "start"), _time_param(params, "end")
        if not self.config.usage_ledger:
            raise OpenAIError(
                404, "This gateway keeps no usage ledger (usage_ledger: false).", "ledger_disabled"
            )
        database = ledger_database(self.config)

        def query() -> list[dict[str, Any]]:
            with contextlib.closing(database.connect(read_only=True)) as db:
                return usage_summary(db, database, group_by, start=start, end=end, tenant=tenant)

        data = await asyncio.to_thread(query)
        return JSONResponse({"object": "list", "group_by": group_by, "data": data})

    async def models(self, request: Request) -> Response:
        principal = self._registry().authenticate(request.headers.get("authorization"))
        allowed = None if principal.is_admin else self._registry().tenants[principal.tenant].models
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


# How much of a prompt identifies its prefix.
_PREFIX_CHARS = 2048
_PLAIN_PREFIX_CHARS = 512
_PLAIN_PREFIX_TOKENS = _PLAIN_PREFIX_CHARS // 4


def _affinity_key(mode: RoutingMode, body: dict[str, Any], headers: Mapping[str, str]) -> str:
    """What affinity routing keys a request on: the session header, or the part of the
    prompt that related requests share (whose KV cache a replica may still hold): every
    message but the last of a conversation, the beginning of a plain prompt."""
    if mode is RoutingMode.SESSION_AFFINITY:
        return headers.get(SESSION_HEADER, "")
    if mode is not RoutingMode.PREFIX_AFFINITY:
        return ""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt[:_PLAIN_PREFIX_CHARS]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return ",".join(map(str, prompt[:_PLAIN_PREFIX_TOKENS]))  # token ids
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return ""
    shared = messages[:-1] if len(messages) > 1 else messages
    prefix = ""
    for message in shared:
        content = message.get("content") if isinstance(message, dict) else None
        prefix += content if isinstance(content, str) else ""
        if len(prefix) >= _PREFIX_CHARS:
            break
    return prefix[:_PREFIX_CHARS] if len(messages) > 1 else prefix[:_PLAIN_PREFIX_CHARS]


def _time_param(params: Mapping[str, str], name: str) -> float | None:
    """Unix seconds or an ISO 8601 date/time (UTC unless it says otherwise)."""
    value = params.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise OpenAIError(
            400,
            f"'{name}' must be unix seconds or an ISO 8601 date, got {value[:40]!r}.",
            "invalid_value",
            param=name,
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


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


def create_gateway_app(config: Config, upstream: Upstream | None = None) -> JsonApp:
    """The gateway as an ASGI app; ``upstream`` replaces the HTTP client (tests, twin).

    Every forwarded request is recorded in SQLite under ``config.data_dir``."""
    # The *_created series only add noise to every scrape.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    gateway = Gateway(config, upstream)
    app = JsonApp(on_startup=gateway.start, on_shutdown=gateway.stop)
    for path in _OPERATIONS:
        app.route(path, gateway.generate, methods=("POST",))
    app.route("/v1/models", gateway.models)
    app.route("/v1/usage", gateway.usage)
    admin = AdminApi(
        gateway._registry, gateway._gate_or_fail, set(config.models), set(config.slo_classes)
    )
    app.route("/v1/admin/tenants", admin.list_tenants)
    app.route("/v1/admin/tenants", admin.create_tenant, methods=("POST",))
    app.route("/v1/admin/tenants/update", admin.update_tenant, methods=("POST",))
    app.route("/v1/admin/keys", admin.create_key, methods=("POST",))
    app.route("/v1/admin/keys/update", admin.update_key, methods=("POST",))
    app.route("/health", gateway.health)
    app.route("/metrics", gateway.prometheus)
    app.state["gateway"] = gateway
    return app
