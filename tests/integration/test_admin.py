"""The admin API and CLI: tenants, keys and budgets changed on a running gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from inferplane import launcher

from .conftest import (
    ADMIN_KEY,
    KEY,
    MODEL,
    Gateway,
    StartEmulator,
    StartGateway,
    client,
    log_text,
)

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


def admin(
    gateway: Gateway, path: str, body: dict[str, Any] | None = None, key: str = ADMIN_KEY
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    if body is None:
        return httpx.get(gateway.url + path, headers=headers)
    return httpx.post(gateway.url + path, json=body, headers=headers)


@pytest.fixture(scope="module")
def replica(start_emulator: StartEmulator) -> launcher.Child:
    return start_emulator(time_scale=50.0)


@pytest.fixture(scope="module")
def shared(replica: launcher.Child, start_gateway: StartGateway) -> Gateway:
    return start_gateway([replica.url])


def test_tenant_key_and_budget_lifecycle_survives_a_restart(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([replica.url])
    created = admin(gateway, "/v1/admin/tenants", {"name": "acme", "run_budget": {"calls": 1}})
    assert created.status_code == 201
    made = admin(gateway, "/v1/admin/keys", {"tenant": "acme", "name": "bot"})
    assert made.status_code == 201
    key = made.json()["key"]
    run = {"X-Inferplane-Run": "r1"}
    acme = client(gateway.url, key=key)
    acme.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, extra_headers=run)
    with pytest.raises(openai.RateLimitError):
        acme.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, extra_headers=run)
    # Raising the budget applies at once, to the run already open.
    assert (
        admin(
            gateway, "/v1/admin/tenants/update", {"name": "acme", "run_budget": {"calls": 2}}
        ).status_code
        == 200
    )
    acme.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, extra_headers=run)

    gateway.child.kill()
    restarted = start_gateway([replica.url], data_dir=gateway.data_dir)
    again = client(restarted.url, key=key)
    with pytest.raises(openai.RateLimitError):  # the store and the ledger both survived
        again.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, extra_headers=run)
    listed = admin(restarted, "/v1/admin/tenants").json()["data"]
    acme_row = next(t for t in listed if t["name"] == "acme")
    assert acme_row["source"] == "api" and acme_row["run_budget"]["calls"] == 2
    assert [k["name"] for k in acme_row["keys"]] == ["bot"]
    assert "sha256" not in str(acme_row)

    assert (
        admin(
            restarted, "/v1/admin/keys/update", {"tenant": "acme", "name": "bot", "disabled": True}
        ).status_code
        == 200
    )
    with pytest.raises(openai.AuthenticationError) as disabled:
        again.models.list()
    assert disabled.value.code == "api_key_disabled"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/admin/tenants", {"name": "x", "budget": {"calls": -1}}, 400, "invalid_admin_request"),
        (
            "/v1/admin/tenants",
            {"name": "x", "budget": {"cost_usd": 1e15}},
            400,
            "invalid_admin_request",
        ),
        ("/v1/admin/tenants", {"name": "x", "colour": "blue"}, 400, "invalid_admin_request"),
        ("/v1/admin/tenants", {"name": "has space"}, 400, "invalid_admin_request"),
        # A "/" would make its budget scopes read as another tenant's.
        ("/v1/admin/tenants", {"name": "team/x"}, 400, "invalid_admin_request"),
        (
            "/v1/admin/tenants",
            {"name": "x", "budget": {"total_tokens": 10**30}},
            400,
            "invalid_admin_request",
        ),
        ("/v1/admin/tenants", {"name": "x", "models": ["gpt-9"]}, 400, "invalid_value"),
        ("/v1/admin/tenants", {"name": "tenant-a"}, 409, "tenant_exists"),
        (
            "/v1/admin/tenants/update",
            {"name": "tenant-a", "disabled": True},
            409,
            "tenant_in_config",
        ),
        ("/v1/admin/keys", {"tenant": "nobody", "name": "k"}, 404, "tenant_not_found"),
        ("/v1/admin/keys/update", {"tenant": "tenant-a", "name": "nope"}, 404, "key_not_found"),
        (
            "/v1/admin/keys/update",
            {"tenant": "tenant-a", "name": "a", "disabled": True},
            409,
            "tenant_in_config",
        ),
    ],
)
def test_bad_admin_requests_are_clear_4xx(
    shared: Gateway, path: str, body: dict[str, Any], status: int, code: str
) -> None:
    reply = admin(shared, path, body)
    assert (reply.status_code, reply.json()["error"]["code"]) == (status, code)


def test_tenant_keys_cannot_use_the_admin_api(shared: Gateway) -> None:
    assert admin(shared, "/v1/admin/tenants", key=KEY).status_code == 403
    assert admin(shared, "/v1/admin/tenants", {"name": "evil"}, key=KEY).status_code == 403


def test_cli_creates_a_key_and_prints_it_once(shared: Gateway) -> None:
    gateway = shared
    env = {**os.environ, "INFERPLANE_ADMIN_KEY": ADMIN_KEY}
    cli = [sys.executable, "-m", "inferplane", "admin"]
    subprocess.run(
        [*cli, "create-tenant", "globex", "--budget", '{"calls": 5}', "--url", gateway.url],
        env=env,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [*cli, "create-key", "globex", "ci", "--url", gateway.url],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    key = out.split("key (shown once): ")[1].split()[0]
    assert client(gateway.url, key=key).models.list().data[0].id == MODEL
    subprocess.run(
        [*cli, "set", "globex", "--key", "ci", "--disabled", "--url", gateway.url],
        env=env,
        check=True,
        capture_output=True,
    )
    with pytest.raises(openai.AuthenticationError):
        client(gateway.url, key=key).models.list()
    bad = subprocess.run(
        [*cli, "create-tenant", "globex", "--url", gateway.url],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "409" in bad.stderr and "Traceback" not in bad.stderr


def test_a_keys_default_workflow_and_run_are_charged_when_headers_name_none(
    shared: Gateway,
) -> None:
    assert (
        admin(shared, "/v1/admin/tenants", {"name": "bots", "run_budget": {"calls": 1}})
    ).status_code == 201
    made = admin(
        shared,
        "/v1/admin/keys",
        {"tenant": "bots", "name": "nightly", "workflow": "etl", "run": "2026-11-23"},
    )
    assert made.status_code == 201
    bot = client(shared.url, key=made.json()["key"])
    bot.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as refused:
        bot.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert refused.value.response.headers["x-inferplane-budget-scope"] == (
        "run:bots/etl/2026-11-23"
    )
    # A header still wins over the key's default.
    bot.chat.completions.create(
        model=MODEL, messages=HI, max_tokens=2, extra_headers={"X-Inferplane-Run": "rerun"}
    )
    bad = admin(shared, "/v1/admin/keys", {"tenant": "bots", "name": "x", "run": "no spaces"})
    assert bad.status_code == 400
    bad = admin(shared, "/v1/admin/keys", {"tenant": "bots", "name": "x", "slo_class": "gold"})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "slo_class")
    realtime = admin(
        shared, "/v1/admin/keys", {"tenant": "bots", "name": "rt", "slo_class": "realtime"}
    )
    assert realtime.status_code == 201


def tenant_row(gateway: Gateway, name: str) -> dict[str, Any] | None:
    """The tenant as ``gateway`` lists it, or None."""
    rows = admin(gateway, "/v1/admin/tenants").json()["data"]
    return next((t for t in rows if t["name"] == name), None)


def settled(
    gateway: Gateway, name: str, done: Callable[[dict[str, Any] | None], bool]
) -> dict[str, Any] | None:
    """The tenant as ``gateway`` lists it once ``done`` holds, or when waiting is useless:
    another process's change reaches a gateway at its next poll of the store (every
    second at most)."""
    deadline = time.monotonic() + 15
    while not done(row := tenant_row(gateway, name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return row


def test_admin_changes_through_two_gateways_at_once_are_all_kept(
    replica: launcher.Child, start_gateway: StartGateway, database_url: str | None
) -> None:
    first = start_gateway([replica.url], database_url=database_url)
    second = start_gateway([replica.url], database_url=database_url, data_dir=first.data_dir)
    assert admin(first, "/v1/admin/tenants", {"name": "acme"}).status_code == 201
    assert settled(second, "acme", lambda t: t is not None) is not None

    # A change through each gateway, each right after the other's, before the other
    # gateway's poll: each applies to the stored tenant, not to a copy a poll behind.
    made = admin(first, "/v1/admin/keys", {"tenant": "acme", "name": "ci"})
    assert made.status_code == 201
    key = made.json()["key"]
    update = {"name": "acme", "budget": {"calls": 100}}
    assert admin(second, "/v1/admin/tenants/update", update).status_code == 200
    key_budget = {"tenant": "acme", "name": "ci", "budget": {"calls": 10}}
    assert admin(second, "/v1/admin/keys/update", key_budget).status_code == 200
    ci = {"name": "ci", "disabled": False, "budget": {"calls": 10, "window": "lifetime"}}

    def both_kept(t: dict[str, Any] | None) -> bool:
        return (
            t is not None
            and t["budget"] == {"calls": 100, "window": "lifetime"}
            and t["keys"] == [ci]
        )

    for gateway in (first, second):
        assert both_kept(settled(gateway, "acme", both_kept)), gateway.url
        assert client(gateway.url, key=key).models.list().data[0].id == MODEL

    # A key disabled through one gateway stays disabled when the other changes the tenant.
    disable = {"tenant": "acme", "name": "ci", "disabled": True}
    assert admin(first, "/v1/admin/keys/update", disable).status_code == 200
    run_budget = {"name": "acme", "run_budget": {"calls": 7}}
    assert admin(second, "/v1/admin/tenants/update", run_budget).status_code == 200

    def disabled_and_budgeted(t: dict[str, Any] | None) -> bool:
        return (
            t is not None
            and t["run_budget"] == {"calls": 7, "window": "lifetime"}
            and [k["disabled"] for k in t["keys"]] == [True]
        )

    for gateway in (first, second):
        assert disabled_and_budgeted(settled(gateway, "acme", disabled_and_budgeted))
        with pytest.raises(openai.AuthenticationError) as refused:
            client(gateway.url, key=key).models.list()
        assert refused.value.code == "api_key_disabled"


def test_changes_that_break_the_tenant_schema_are_refused_and_nothing_is_stored(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([replica.url])
    assert admin(gateway, "/v1/admin/tenants", {"name": "t2"}).status_code == 201
    made = admin(gateway, "/v1/admin/keys", {"tenant": "t2", "name": "k"})
    assert made.status_code == 201
    key = made.json()["key"]
    runs_only = {"wall_time_s": 5}
    for path, body in [
        ("/v1/admin/tenants", {"name": "t1", "budget": runs_only}),
        ("/v1/admin/tenants", {"name": "t1", "workflow_budget": runs_only}),
        ("/v1/admin/tenants/update", {"name": "t2", "budget": runs_only}),
        ("/v1/admin/tenants/update", {"name": "t2", "workflow_budget": runs_only}),
        ("/v1/admin/keys", {"tenant": "t2", "name": "k2", "budget": runs_only}),
        ("/v1/admin/keys/update", {"tenant": "t2", "name": "k", "budget": runs_only}),
    ]:
        reply = admin(gateway, path, body)
        assert (reply.status_code, reply.json()["error"]["code"]) == (
            400,
            "invalid_admin_request",
        ), (path, body, reply.text)
        assert "wall_time_s applies to runs only" in reply.json()["error"]["message"]
    # Where it does apply, it is taken.
    run_budget = {"name": "t2", "run_budget": runs_only}
    assert admin(gateway, "/v1/admin/tenants/update", run_budget).status_code == 200

    gateway.child.kill()
    restarted = start_gateway([replica.url], data_dir=gateway.data_dir)
    assert tenant_row(restarted, "t1") is None
    t2 = tenant_row(restarted, "t2")
    assert t2 is not None and t2["budget"] is None and t2["workflow_budget"] is None
    assert t2["run_budget"]["wall_time_s"] == 5
    assert t2["keys"] == [{"name": "k", "disabled": False, "budget": None}]
    assert client(restarted.url, key=key).models.list().data[0].id == MODEL
    assert "invalid and ignored" not in log_text(restarted.child)
