"""The admin API and CLI: tenants, keys and budgets changed on a running gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import httpx
import openai
import pytest

from inferplane import launcher

from .conftest import ADMIN_KEY, KEY, MODEL, Gateway, StartEmulator, StartGateway, client

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
