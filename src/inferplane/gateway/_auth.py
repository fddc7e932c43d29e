"""API keys: clients present ``Authorization: Bearer <key>``; only SHA-256 digests are stored."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from inferplane.config import Config
from inferplane.wire import OpenAIError

__all__ = ["ADMIN_TENANT", "KeyRing", "Principal", "hash_key"]

ADMIN_TENANT = "_admin"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    key_name: str

    @property
    def is_admin(self) -> bool:
        return self.tenant == ADMIN_TENANT


class KeyRing:
    """Digest -> principal. Looking up a digest leaks nothing useful about the key itself."""

    def __init__(self, config: Config) -> None:
        self._by_digest: dict[str, Principal] = {}
        for tenant_name, tenant in config.tenants.items():
            for key in tenant.keys:
                self._by_digest[key.sha256] = Principal(tenant_name, key.name)
        if config.admin_key_sha256:
            self._by_digest[config.admin_key_sha256] = Principal(ADMIN_TENANT, "admin")

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
        principal = self._by_digest.get(hash_key(key.strip()))
        if principal is None:
            raise OpenAIError(401, "Incorrect API key provided.", "invalid_api_key")
        return principal
