"""Several gateway processes sharing one budget through the ledger's database (SQLite
file or PostgreSQL): exact together, and a killed one leaves nothing reserved."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion

from .conftest import (
    ADMIN_KEY,
    KEY,
    MODEL,
    Gateway,
    StartEmulator,
    StartGateway,
    client,
    ledger_rows,
)

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


def test_two_gateways_admit_no_more_than_the_budget_together(
    start_emulator: StartEmulator, start_gateway: StartGateway, database_url: str | None
) -> None:
    replica = start_emulator(time_scale=50.0)
    budget = "budget: {calls: 50}"
    first = start_gateway([replica.url], tenant_a=budget, database_url=database_url)
    second = start_gateway(
        [replica.url], tenant_a=budget, database_url=database_url, data_dir=first.data_dir
    )

    async def storm() -> list[int]:
        async with contextlib.AsyncExitStack() as stack:
            https = [
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        base_url=g.url,
                        headers={"authorization": f"Bearer {KEY}"},
                        timeout=30,
                        limits=httpx.Limits(max_connections=100),
                    )
                )
                for g in (first, second)
            ]
            replies = await asyncio.gather(
                *(
                    https[i % 2].post(
                        "/v1/chat/completions",
                        json={"model": MODEL, "messages": HI, "max_tokens": 8},
                    )
                    for i in range(200)
                )
            )
        return [r.status_code for r in replies]

    statuses = asyncio.run(storm())
    admitted = statuses.count(200)
    assert statuses.count(429) == 200 - admitted
    # Exact: never more than the budget. Leases held by one gateway and not yet given
    # back may refuse a few requests the other one got (each holds at most a chunk).
    assert 40 <= admitted <= 50
    rows = [r for r in ledger_rows(first, expected=admitted) if r["status"] == 200]
    assert len(rows) == sum(int(r["calls"]) for r in rows) == admitted  # type: ignore[call-overload]
    with contextlib.closing(first.database.connect(read_only=True)) as db:
        (spent,) = db.execute(
            "SELECT SUM(calls) FROM budget_spend WHERE scope = 'tenant:tenant-a'"
        ).fetchone()
    assert spent == admitted


def ask(gateway: Gateway) -> ChatCompletion:
    return client(gateway.url).chat.completions.create(model=MODEL, messages=HI, max_tokens=8)


def hold_and_kill(victim: Gateway, other: Gateway) -> None:
    """Four streams hold the budget's four calls (leased by ``victim``) when it is
    killed; ``other`` cannot have one meanwhile."""
    started = threading.Barrier(5)

    def stream() -> None:
        chunks = client(victim.url).chat.completions.create(
            model=MODEL,
            messages=HI,
            max_tokens=200,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        with contextlib.suppress(openai.APIError, httpx.HTTPError):
            for i, _ in enumerate(chunks):
                if i == 1:
                    started.wait()

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(timeout=30)
    with pytest.raises(openai.RateLimitError):
        ask(other)
    victim.child.kill(signal.SIGKILL)
    for t in threads:
        t.join()


BUDGET = "budget: {calls: 4}"


def test_a_killed_gateways_leases_expire_for_the_others(
    start_emulator: StartEmulator, start_gateway: StartGateway, database_url: str | None
) -> None:
    slow = start_emulator(time_scale=1.0)  # streams last a second or so
    victim = start_gateway([slow.url], tenant_a=BUDGET, database_url=database_url, lease_ttl_s=2)
    other = start_gateway(
        [start_emulator(time_scale=50.0).url],
        tenant_a=BUDGET,
        database_url=database_url,
        data_dir=victim.data_dir,
    )
    hold_and_kill(victim, other)
    # Nothing it held was committed: once its leases expire, all four calls are free.
    for _ in range(100):
        try:
            ask(other)
            break
        except openai.RateLimitError:
            time.sleep(0.2)
    else:
        pytest.fail("the killed gateway's leases never expired")
    for _ in range(3):
        ask(other)
    with pytest.raises(openai.RateLimitError):
        ask(other)


def test_a_restarted_gateway_takes_back_its_predecessors_leases_at_once(
    start_emulator: StartEmulator, start_gateway: StartGateway, database_url: str | None
) -> None:
    slow = start_emulator(time_scale=1.0)
    victim = start_gateway([slow.url], tenant_a=BUDGET, database_url=database_url)
    fast = start_emulator(time_scale=50.0).url
    other = start_gateway(
        [fast], tenant_a=BUDGET, database_url=database_url, data_dir=victim.data_dir
    )
    hold_and_kill(victim, other)
    # Same host and port: the same instance. Its leases (30 s TTL) are released on start.
    port = int(victim.url.rsplit(":", 1)[1])
    restarted = start_gateway(
        [fast], tenant_a=BUDGET, database_url=database_url, data_dir=victim.data_dir, port=port
    )
    for _ in range(4):
        ask(restarted)
    assert other.child.process.poll() is None


def test_tenants_created_through_one_gateway_are_served_by_the_others(
    start_emulator: StartEmulator, start_gateway: StartGateway, database_url: str | None
) -> None:
    replica = start_emulator(time_scale=50.0)
    first = start_gateway([replica.url], database_url=database_url)
    second = start_gateway([replica.url], database_url=database_url, data_dir=first.data_dir)
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    made = httpx.post(
        first.url + "/v1/admin/tenants",
        json={"name": "acme", "run_budget": {"calls": 1}},
        headers=headers,
    )
    assert made.status_code == 201
    key = httpx.post(
        first.url + "/v1/admin/keys", json={"tenant": "acme", "name": "bot"}, headers=headers
    ).json()["key"]
    acme = client(second.url, key=key)
    run = {"X-Inferplane-Run": "r1"}
    for _ in range(50):  # the other gateway reads stored tenants every second
        try:
            acme.chat.completions.create(model=MODEL, messages=HI, max_tokens=2, extra_headers=run)
            break
        except openai.AuthenticationError:
            time.sleep(0.1)
    else:
        pytest.fail("the second gateway never learned the new key")
    # The run's budget (one call) is shared: the first gateway refuses the next call.
    with pytest.raises(openai.RateLimitError):
        client(first.url, key=key).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=2, extra_headers=run
        )
