"""Who may call: tenants and their API keys, from the config file and the admin API.

Clients present ``Authorization: Bearer <key>``; only SHA-256 digests are
stored. Tenants defined in the config file are read-only at run time;
tenants created through the admin API live in the ``TenantStore`` beside the
ledger and survive restarts. A name defined in both is the config's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError

from inferplane.config import Config, Tenant
from inferplane.ledger import TenantStore
from inferplane.wire import OpenAIError

__all__ = ["ADMIN_TENANT", "Principal", "Registry", "hash_key"]

ADMIN_TENANT = "_admin"
log = logging.getLogger("inferplane.gateway")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_name: str
    workflow: str | None = None  # the key's defaults, when a request's headers name none
    run: str | None = None
    slo_class: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.tenant == ADMIN_TENANT


class Registry:
    """Tenants by name and keys by digest; looking up a digest leaks nothing of the key."""

    def __init__(self, config: Config, store: TenantStore | None) -> None:
        self._config = config
        self._store = store
        self.tenants: dict[str, Tenant] = dict(config.tenants)
        self.version = 0  # goes up with every change of ``tenants``
        docs = store.load() if store else {}
        for name in set(docs) & set(config.tenants):
            log.warning(
                "tenant %r is defined in the config file and the store: using the config file's",
                name,
            )
        self.take_stored(docs)

    def take_stored(self, docs: dict[str, str]) -> list[str]:
        """Adopt the stored tenants (name -> JSON) that differ from ours, such as those
        another gateway process created or changed; returns their names."""
        changed = []
        for name, doc in docs.items():
            if self.is_static(name):
                continue
            if self._store is not None and self._store.changed_since_load(name):
                continue  # read before our own change of it: ours is newer
            try:
                tenant = Tenant.model_validate_json(doc)
            except ValidationError as exc:  # written by an older version, say: keep serving
                log.error("stored tenant %r is invalid and ignored: %s", name, exc)
                continue
            if self.tenants.get(name) != tenant:
                self.tenants[name] = tenant
                changed.append(name)
        self._index()
        return changed

    def _index(self) -> None:
        by_digest: dict[str, tuple[Principal, bool]] = {}
        for name, tenant in self.tenants.items():
            for key in tenant.keys:
                if key.sha256 in by_digest:
                    raise ValueError(f"API key {key.name!r} of tenant {name!r} is not unique")
                principal = Principal(name, key.name, key.workflow, key.run, key.slo_class)
                by_digest[key.sha256] = (principal, key.disabled or tenant.disabled)
        if self._config.admin_key_sha256:
            by_digest[self._config.admin_key_sha256] = (Principal(ADMIN_TENANT, "admin"), False)
        self._by_digest = by_digest
        self.version += 1

    def is_static(self, tenant: str) -> bool:
        return tenant in self._config.tenants

    async def change(self, name: str, edit: Callable[[Tenant | None], Tenant]) -> Tenant:
        """Change tenant ``name`` (None: there is none) to ``edit(tenant)`` and return it;
        durable, and in force here, when this returns.

        ``edit`` is applied to the stored tenant, not to this process's copy (which may
        be a poll behind another process's change), inside a transaction that excludes
        every other change of it; what ``edit`` raises (an ``OpenAIError``) cancels the
        change. A tenant of the config file, or any tenant when there is no store, is
        read-only: its own errors come first (``edit`` sees our copy), then 409.
        """
        if self.is_static(name):
            edit(self.tenants[name])
            raise OpenAIError(
                409,
                f"Tenant '{name}' is defined in the config file; change it there.",
                "tenant_in_config",
            )
        if self._store is None:
            edit(self.tenants.get(name))
            raise OpenAIError(
                409,
                "This gateway keeps no store (usage_ledger: false), so "
                "tenants can only be defined in its config file.",
                "no_store",
            )

        def edit_doc(doc: str | None) -> str:
            stored = None
            if doc is not None:
                try:
                    stored = Tenant.model_validate_json(doc)
                except ValidationError as exc:  # ignored by every gateway: as if none
                    log.warning("replacing the invalid stored tenant %r: %s", name, exc)
            tenant = edit(stored)
            self._check_unique(name, tenant)
            return tenant.model_dump_json(exclude_defaults=True)

        doc = await asyncio.to_thread(self._store.change, name, edit_doc)
        tenant = Tenant.model_validate_json(doc)
        previous = self.tenants.get(name)
        self.tenants[name] = tenant
        try:
            self._index()
        except ValueError:  # another process stored the same digest meanwhile
            self._restore(name, previous)
            raise
        return tenant

    def _check_unique(self, name: str, tenant: Tenant) -> None:
        """Every key of ``tenant`` is one no other tenant (or the admin) has."""
        by_digest = self._by_digest  # replaced whole, never changed: safe from a thread
        seen: set[str] = set()
        for key in tenant.keys:
            other = by_digest.get(key.sha256)
            if key.sha256 in seen or (other is not None and other[0].tenant != name):
                raise OpenAIError(
                    409, f"API key {key.name!r} of tenant {name!r} is not unique", "duplicate_key"
                )
            seen.add(key.sha256)

    def _restore(self, name: str, previous: Tenant | None) -> None:
        if previous is None:
            del self.tenants[name]
        else:
            self.tenants[name] = previous
        self._index()

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise OpenAIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                "missing_api_key",
            )
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise OpenAIError(
                401, "The Authorization header must be 'Bearer <key>'.", "invalid_api_key"
            )
        found = self._by_digest.get(hash_key(key.strip()))
        if found is None:
            raise OpenAIError(401, "Incorrect API key provided.", "invalid_api_key")
        principal, disabled = found
        if disabled:
            raise OpenAIError(
                401, "This API key or its tenant has been disabled.", "api_key_disabled"
            )
        return principal
