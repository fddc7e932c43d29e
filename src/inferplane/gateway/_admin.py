"""The admin API: tenants, their keys and budgets, changed at run time with the admin key.

Routes (JSON bodies, admin key only):

- ``GET /v1/admin/tenants``: every tenant, where it is defined, its keys (names only).
- ``POST /v1/admin/tenants``: ``{"name", "models"?, "budget"?, "workflow_budget"?,
  "run_budget"?}`` creates a tenant (201).
- ``POST /v1/admin/tenants/update``: ``{"name", ...any of the above, "disabled"?}``.
- ``POST /v1/admin/keys``: ``{"tenant", "name", "budget"?}`` makes a key and shows it
  once (201); only its SHA-256 digest is kept.
- ``POST /v1/admin/keys/update``: ``{"tenant", "name", "disabled"?, "budget"?}``.

Changes are durable (the tenant store) before the answer, and apply at once,
budgets of open accounts included. Each is made to the stored tenant in one
transaction, so changes made at once through several gateway processes are all
kept; a changed tenant is validated whole, as the config file's are (400 if not).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inferplane.config import ApiKey, Budget, RunId, Tenant, TenantName
from inferplane.config._schema import Name
from inferplane.gateway._auth import Registry, hash_key
from inferplane.gateway._budgets import BudgetGate
from inferplane.wire import OpenAIError

__all__ = ["AdminApi"]

_Body = TypeVar("_Body", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _NewTenant(_Strict):
    name: TenantName
    models: list[Name] | None = None
    budget: Budget | None = None
    workflow_budget: Budget | None = None
    run_budget: Budget | None = None
    weight: float = Field(1.0, gt=0, le=1000)


class _TenantUpdate(_Strict):
    """Only the fields present in the body change; ``null`` removes a budget."""

    name: TenantName
    models: list[Name] | None = None
    budget: Budget | None = None
    workflow_budget: Budget | None = None
    run_budget: Budget | None = None
    disabled: bool = False
    weight: float = Field(1.0, gt=0, le=1000)


class _NewKey(_Strict):
    tenant: TenantName
    name: TenantName
    budget: Budget | None = None
    workflow: RunId | None = None
    run: RunId | None = None
    slo_class: Name | None = None


class _KeyUpdate(_Strict):
    tenant: TenantName
    name: TenantName
    budget: Budget | None = None
    disabled: bool = False
    workflow: RunId | None = None
    run: RunId | None = None
    slo_class: Name | None = None


class AdminApi:
    def __init__(
        self,
        registry: Callable[[], Registry],
        gate: Callable[[], BudgetGate],
        known_models: set[str],
        known_classes: set[str],
    ) -> None:
        self._registry = registry
        self._gate = gate
        self._known_models = known_models
        self._known_classes = known_classes

    def _admin(self, request: Request) -> Registry:
        registry = self._registry()
        if not registry.authenticate(request.headers.get("authorization")).is_admin:
            raise OpenAIError(403, "The admin API needs the admin key.", "admin_only")
        return registry

    async def list_tenants(self, request: Request) -> Response:
        registry = self._admin(request)
        data = [
            {
                "name": name,
                "source": "config" if registry.is_static(name) else "api",
                "disabled": tenant.disabled,
                "models": tenant.models,
                "budget": _dump(tenant.budget),
                "workflow_budget": _dump(tenant.workflow_budget),
                "run_budget": _dump(tenant.run_budget),
                "keys": [
                    {"name": k.name, "disabled": k.disabled, "budget": _dump(k.budget)}
                    for k in tenant.keys
                ],
            }
            for name, tenant in sorted(registry.tenants.items())
        ]
        return JSONResponse({"object": "list", "data": data})

    async def create_tenant(self, request: Request) -> Response:
        registry = self._admin(request)
        new = await _parse(request, _NewTenant)

        def create(tenant: Tenant | None) -> Tenant:
            if tenant is not None:
                raise OpenAIError(409, f"Tenant '{new.name}' exists already.", "tenant_exists")
            self._check_models(new.models)
            return _valid(Tenant, new.model_dump(exclude={"name"}))

        await registry.change(new.name, create)
        return JSONResponse({"name": new.name, "created": True}, status_code=201)

    async def update_tenant(self, request: Request) -> Response:
        registry = self._admin(request)
        update = await _parse(request, _TenantUpdate)
        changes = _changes(update, exclude={"name"})

        def change(tenant: Tenant | None) -> Tenant:
            tenant = _found(tenant, update.name)
            self._check_models(changes.get("models"))
            return _valid(Tenant, {**tenant.model_dump(), **changes})

        await registry.change(update.name, change)
        await self._gate().refresh(update.name, time.time())
        return JSONResponse({"name": update.name, "updated": sorted(changes)})

    async def create_key(self, request: Request) -> Response:
        registry = self._admin(request)
        new = await _parse(request, _NewKey)
        self._check_class(new.slo_class)
        key = "sk-ip-" + secrets.token_urlsafe(32)
        entry = _valid(ApiKey, {**new.model_dump(exclude={"tenant"}), "sha256": hash_key(key)})

        def add(tenant: Tenant | None) -> Tenant:
            tenant = _found(tenant, new.tenant)
            if any(k.name == new.name for k in tenant.keys):
                raise OpenAIError(
                    409,
                    f"Tenant '{new.tenant}' has a key named '{new.name}' already.",
                    "key_exists",
                )
            return _valid(Tenant, {**tenant.model_dump(), "keys": [*tenant.keys, entry]})

        await registry.change(new.tenant, add)
        return JSONResponse(
            {
                "tenant": new.tenant,
                "name": new.name,
                "key": key,
                "note": "Shown once: only its SHA-256 digest is kept.",
            },
            status_code=201,
        )

    async def update_key(self, request: Request) -> Response:
        registry = self._admin(request)
        update = await _parse(request, _KeyUpdate)
        self._check_class(update.slo_class)
        changes = _changes(update, exclude={"tenant", "name"})

        def change(tenant: Tenant | None) -> Tenant:
            tenant = _found(tenant, update.tenant)
            if not any(k.name == update.name for k in tenant.keys):
                raise OpenAIError(
                    404,
                    f"Tenant '{update.tenant}' has no key named '{update.name}'.",
                    "key_not_found",
                )
            keys = [
                _valid(ApiKey, {**k.model_dump(), **changes}) if k.name == update.name else k
                for k in tenant.keys
            ]
            return _valid(Tenant, {**tenant.model_dump(), "keys": keys})

        await registry.change(update.tenant, change)
        await self._gate().refresh(update.tenant, time.time())
        return JSONResponse(
            {"tenant": update.tenant, "name": update.name, "updated": sorted(changes)}
        )

    def _check_class(self, slo_class: str | None) -> None:
        if slo_class is not None and slo_class not in self._known_classes:
            raise OpenAIError(
                400,
                f"Unknown SLO class '{slo_class}'; the gateway has "
                f"{', '.join(sorted(self._known_classes))}.",
                "invalid_admin_request",
                param="slo_class",
            )

    def _check_models(self, models: list[str] | None) -> None:
        unknown = sorted(set(models or ()) - self._known_models)
        if unknown:
            raise OpenAIError(
                400,
                f"Unknown models {unknown}; the gateway serves {sorted(self._known_models)}.",
                "invalid_value",
                param="models",
            )


def _changes(update: BaseModel, exclude: set[str]) -> dict[str, Any]:
    """The fields the request body named, with their values."""
    return {name: getattr(update, name) for name in update.model_fields_set - exclude}


def _found(tenant: Tenant | None, name: str) -> Tenant:
    if tenant is None:
        raise OpenAIError(404, f"No tenant named '{name}'.", "tenant_not_found")
    return tenant


def _valid(model: type[_Body], data: dict[str, Any]) -> _Body:
    """``model`` made from ``data`` through all its validation: a new or changed tenant or
    key is checked as a whole, as the config file's are, before anything is stored."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _dump(budget: Budget | None) -> dict[str, Any] | None:
    return None if budget is None else budget.model_dump(mode="json", exclude_none=True)


async def _parse(request: Request, model: type[_Body]) -> _Body:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> OpenAIError:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: "
        f"{'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}"
        for e in exc.errors()
    )
    return OpenAIError(400, f"Invalid admin request: {problems}.", "invalid_admin_request")
