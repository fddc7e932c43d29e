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
budgets of open accounts included.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from inferplane.config import ApiKey, Budget, RunId, Tenant
from inferplane.config._schema import Name
from inferplane.gateway._auth import Registry, hash_key
from inferplane.gateway._budgets import BudgetGate
from inferplane.wire import OpenAIError

__all__ = ["AdminApi"]

_Body = TypeVar("_Body", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _NewTenant(_Strict):
    name: Name
    models: list[Name] | None = None
    budget: Budget | None = None
    workflow_budget: Budget | None = None
    run_budget: Budget | None = None
    weight: float = Field(1.0, gt=0, le=1000)


class _TenantUpdate(_Strict):
    """Only the fields present in the body change; ``null`` removes a budget."""

    name: Name
    models: list[Name] | None = None
    budget: Budget | None = None
    workflow_budget: Budget | None = None
    run_budget: Budget | None = None
    disabled: bool = False
    weight: float = Field(1.0, gt=0, le=1000)


class _NewKey(_Strict):
    tenant: Name
    name: Name
    budget: Budget | None = None
    workflow: RunId | None = None
    run: RunId | None = None
    slo_class: Name | None = None


class _KeyUpdate(_Strict):
    tenant: Name
    name: Name
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
        if new.name in registry.tenants:
            raise OpenAIError(409, f"Tenant '{new.name}' exists already.", "tenant_exists")
        self._check_models(new.models)
        tenant = Tenant(
            models=new.models,
            budget=new.budget,
            workflow_budget=new.workflow_budget,
            run_budget=new.run_budget,
            weight=new.weight,
        )
        registry.put(new.name, tenant)
        return JSONResponse({"name": new.name, "created": True}, status_code=201)

    async def update_tenant(self, request: Request) -> Response:
        registry = self._admin(request)
        update = await _parse(request, _TenantUpdate)
        tenant = self._tenant(registry, update.name)
        changes = _changes(update, exclude={"name"})
        self._check_models(changes.get("models"))
        registry.put(update.name, tenant.model_copy(update=changes))
        await self._gate().refresh(update.name, time.time())
        return JSONResponse({"name": update.name, "updated": sorted(changes)})

    async def create_key(self, request: Request) -> Response:
        registry = self._admin(request)
        new = await _parse(request, _NewKey)
        self._check_class(new.slo_class)
        tenant = self._tenant(registry, new.tenant)
        if any(k.name == new.name for k in tenant.keys):
            raise OpenAIError(
                409, f"Tenant '{new.tenant}' has a key named '{new.name}' already.", "key_exists"
            )
        key = "sk-ip-" + secrets.token_urlsafe(32)
        entry = ApiKey(
            name=new.name,
            sha256=hash_key(key),
            budget=new.budget,
            workflow=new.workflow,
            run=new.run,
            slo_class=new.slo_class,
        )
        registry.put(new.tenant, tenant.model_copy(update={"keys": [*tenant.keys, entry]}))
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
        tenant = self._tenant(registry, update.tenant)
        changes = _changes(update, exclude={"tenant", "name"})
        keys = []
        for key in tenant.keys:
            if key.name == update.name:
                key = key.model_copy(update=changes)
            keys.append(key)
        if not any(k.name == update.name for k in tenant.keys):
            raise OpenAIError(
                404, f"Tenant '{update.tenant}' has no key named '{update.name}'.", "key_not_found"
            )
        registry.put(update.tenant, tenant.model_copy(update={"keys": keys}))
        await self._gate().refresh(update.tenant, time.time())
        return JSONResponse(
            {"tenant": update.tenant, "name": update.name, "updated": sorted(changes)}
        )

    def _tenant(self, registry: Registry, name: str) -> Tenant:
        tenant = registry.tenants.get(name)
        if tenant is None:
            raise OpenAIError(404, f"No tenant named '{name}'.", "tenant_not_found")
        return tenant

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
    """The fields the request body named, as values ready for ``model_copy(update=...)``."""
    return {name: getattr(update, name) for name in update.model_fields_set - exclude}


def _dump(budget: Budget | None) -> dict[str, Any] | None:
    return None if budget is None else budget.model_dump(mode="json", exclude_none=True)


async def _parse(request: Request, model: type[_Body]) -> _Body:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: "
            f"{'unknown field' if e['type'] == 'extra_forbidden' else e['msg']}"
            for e in exc.errors()
        )
        raise OpenAIError(
            400, f"Invalid admin request: {problems}.", "invalid_admin_request"
        ) from None
