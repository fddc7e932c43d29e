"""The tenant store in SQLite and PostgreSQL: a change is a read, edit and write of the
stored document in one transaction, so changes made at once by several processes (here,
several stores, each with its own connection) are all kept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Callable

import pytest

from inferplane.config import Config, Tenant
from inferplane.gateway import hash_key
from inferplane.gateway._auth import Registry
from inferplane.ledger import Database, TenantStore


def append(item: str) -> Callable[[str | None], str]:
    """An edit that adds ``item`` to the document's list (creating it if there is none)."""

    def edit(doc: str | None) -> str:
        items = [] if doc is None else json.loads(doc)["items"]
        return json.dumps({"items": [*items, item]})

    return edit


def test_changes_made_at_once_by_several_stores_are_all_kept(database: Database) -> None:
    TenantStore(database).close()  # creates the schema
    errors: list[BaseException] = []

    def writer(name: str) -> None:
        try:
            with contextlib.closing(TenantStore(database)) as store:
                for i in range(10):
                    store.change("acme", append(f"{name}-{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with contextlib.closing(TenantStore(database)) as store:
        items = json.loads(store.load()["acme"])["items"]
    # Every writer created the tenant if it found none, or added to what was stored.
    assert sorted(items) == sorted(f"w{n}-{i}" for n in range(4) for i in range(10))


def test_an_edit_that_raises_changes_nothing(database: Database) -> None:
    with contextlib.closing(TenantStore(database)) as store:
        store.change("acme", lambda doc: '{"items": []}')
        version = store.version()

        def refuse(doc: str | None) -> str:
            raise LookupError("no")

        with pytest.raises(LookupError):
            store.change("acme", refuse)
        with pytest.raises(LookupError):
            store.change("globex", refuse)
        assert store.load() == {"acme": '{"items": []}'}
        assert store.version() == version
        # Nothing was left open: the next change goes through.
        assert store.change("acme", append("x")) == '{"items": ["x"]}'
        assert store.version() != version


CONFIG = Config.model_validate(
    {
        "admin_key_sha256": hash_key("sk-admin"),
        "models": {"m": {"backends": [{"url": "http://127.0.0.1:9", "engine": "vllm"}]}},
    }
)


def test_a_poll_read_before_our_own_change_does_not_undo_it(database: Database) -> None:
    with (
        contextlib.closing(TenantStore(database)) as store,
        contextlib.closing(TenantStore(database)) as other,
    ):
        registry = Registry(CONFIG, store)
        asyncio.run(registry.change("acme", lambda t: Tenant()))
        polled = store.load()  # a poll, adopted only after the change below
        asyncio.run(registry.change("acme", lambda t: Tenant(disabled=True)))
        assert registry.take_stored(polled) == []
        assert registry.tenants["acme"].disabled
        # Another process's later change is adopted at the next poll.
        other.change("acme", lambda doc: Tenant(weight=2).model_dump_json())
        assert registry.take_stored(store.load()) == ["acme"]
        assert registry.tenants["acme"] == Tenant(weight=2)
