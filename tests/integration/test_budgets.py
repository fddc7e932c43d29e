"""Budgets enforced at the door, exact under concurrency, surviving a kill -9."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from typing import Any

import httpx
import openai
import pytest

from inferplane import launcher
from inferplane.perf import count_text_tokens

from .conftest import (
    KEY,
    MODEL,
    DeadUrl,
    Gateway,
    StartEmulator,
    StartGateway,
    client,
    ledger_rows,
)

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def replica(start_emulator: StartEmulator) -> launcher.Child:
    return start_emulator(time_scale=50.0)


def ask(gateway: Gateway, run: str | None = None, max_tokens: int = 4, **kwargs: Any) -> Any:
    headers = {"X-Inferplane-Workflow": "triage"}
    if run is not None:
        headers["X-Inferplane-Run"] = run
    return client(gateway.url).chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=max_tokens,
        extra_headers=headers,
        extra_body={"ignore_eos": True},
        **kwargs,
    )


def test_a_run_budget_refuses_at_once_with_the_scope_and_what_is_left(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([replica.url], tenant_a="run_budget: {calls: 3}")
    for _ in range(3):
        ask(gateway, run="r1")
    with pytest.raises(openai.RateLimitError) as refused:
        ask(gateway, run="r1")
    assert refused.value.code == "budget_exceeded"
    headers = refused.value.response.headers
    assert headers["x-inferplane-budget-scope"] == "run:tenant-a/triage/r1"
    assert headers["x-inferplane-budget-dimension"] == "calls"
    assert headers["x-inferplane-budget-remaining"] == "0"
    ask(gateway, run="r2")  # another run has its own budget
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'inferplane_errors_total{error_type="budget_exceeded",gen_ai_request_model=""} 1.0' in (
        metrics
    )


def test_cost_budget_uses_the_model_price(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    # $2 per 1M output tokens = 2 micro-dollars per token; the budget is 100 micro-dollars.
    gateway = start_gateway(
        [replica.url],
        tenant_a="budget: {cost_usd: 0.0001}",
        model="price: {input_per_1m: 0, output_per_1m: 2}",
    )
    ask(gateway, max_tokens=45)  # spends exactly 90 (ignore_eos)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(gateway, max_tokens=60)  # 10 left: 5 tokens, fewer than a partial grant's 16
    assert refused.value.response.headers["x-inferplane-budget-dimension"] == "cost_micros"


def test_near_the_end_of_a_budget_a_stream_is_cut_where_the_budget_ends(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([replica.url], tenant_a="run_budget: {output_tokens: 100}")
    ask(gateway, run="r", max_tokens=60)  # 40 output tokens left in run r
    chunks = list(ask(gateway, run="r", max_tokens=500, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert count_text_tokens(text) == 40
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    stop = chunks[-1]
    assert stop.choices == [] and stop.model_extra["inferplane"]["stopped_by"] == "budget"
    assert stop.model_extra["inferplane"]["output_tokens_granted"] == 40
    with pytest.raises(openai.RateLimitError):
        ask(gateway, run="r", max_tokens=500)  # nothing left


def test_a_capped_answer_says_so_in_a_header(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([replica.url], tenant_a="run_budget: {total_tokens: 100}")
    reply = client(gateway.url).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=HI,
        max_tokens=1000,
        extra_body={"ignore_eos": True},
        extra_headers={"X-Inferplane-Run": "r"},
    )
    granted = int(reply.headers["x-inferplane-budget-capped-output-tokens"])
    answer = reply.parse()
    assert answer.usage.prompt_tokens + granted == 100
    assert answer.usage.completion_tokens == granted
    assert answer.choices[0].finish_reason == "length"


def test_bad_run_header_is_400(replica: launcher.Child, start_gateway: StartGateway) -> None:
    gateway = start_gateway([replica.url])
    with pytest.raises(openai.BadRequestError) as bad:
        ask(gateway, run="no spaces allowed")
    assert bad.value.code == "invalid_header"


def test_200_concurrent_requests_against_a_budget_that_fits_50(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([replica.url], tenant_a="budget: {calls: 50}")

    async def storm() -> list[int]:
        async with httpx.AsyncClient(
            base_url=gateway.url,
            headers={"authorization": f"Bearer {KEY}"},
            timeout=30,
            limits=httpx.Limits(max_connections=200),
        ) as http:
            replies = await asyncio.gather(
                *(
                    http.post(
                        "/v1/chat/completions",
                        json={"model": MODEL, "messages": HI, "max_tokens": 8},
                    )
                    for _ in range(200)
                )
            )
        return [r.status_code for r in replies]

    statuses = asyncio.run(storm())
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150
    rows = ledger_rows(gateway, expected=50)
    assert sum(r["calls"] for r in rows) == 50


def test_requests_reusing_a_client_request_id_are_each_held_and_recorded(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    """A client's id need not be unique (retries, trace ids): were it the hold id,
    concurrent requests would replace each other's holds and overrun the budget, and
    the ledger would keep one row of many."""
    gateway = start_gateway([replica.url], tenant_a="budget: {calls: 10}")

    async def storm() -> tuple[list[str], int]:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=30
        ) as api:
            results = await asyncio.gather(
                *(
                    api.chat.completions.create(
                        model=MODEL,
                        messages=HI,
                        max_tokens=4,
                        extra_headers={"X-Request-Id": "retry-of-42"},
                    )
                    for _ in range(40)
                ),
                return_exceptions=True,
            )
        answered = [r._request_id for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, openai.RateLimitError)]
        return [rid for rid in answered if rid], len(refused)

    answered, refused = asyncio.run(storm())
    assert (len(answered), refused) == (10, 30)
    rows = ledger_rows(gateway, expected=10)
    assert len(rows) == 10
    assert {r["request_id"] for r in rows} == set(answered)
    assert {r["client_request_id"] for r in rows} == {"retry-of-42"}


def test_spend_survives_kill_9(
    replica: launcher.Child, start_gateway: StartGateway, database_url: str | None
) -> None:
    budget = "budget: {calls: 2}"
    gateway = start_gateway([replica.url], tenant_a=budget, database_url=database_url)
    ask(gateway)
    ask(gateway)
    assert len(ledger_rows(gateway, expected=2)) == 2
    gateway.child.kill(signal.SIGKILL)
    restarted = start_gateway(
        [replica.url], tenant_a=budget, data_dir=gateway.data_dir, database_url=database_url
    )
    with pytest.raises(openai.RateLimitError):
        ask(restarted)


def test_kill_9_under_load_loses_no_answered_request(
    replica: launcher.Child, start_gateway: StartGateway, database_url: str | None
) -> None:
    gateway = start_gateway(
        [replica.url], tenant_a="budget: {calls: 100000}", database_url=database_url
    )
    answered: list[str] = []

    async def load() -> None:
        enough = asyncio.Event()
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"authorization": f"Bearer {KEY}"}, timeout=10
        ) as http:

            async def loop() -> None:
                while True:
                    try:
                        reply = await http.post(
                            "/v1/chat/completions",
                            json={"model": MODEL, "messages": HI, "max_tokens": 4},
                        )
                    except httpx.TransportError:
                        return  # the gateway is gone
                    if reply.status_code == 200:
                        answered.append(reply.headers["x-request-id"])
                        if len(answered) >= 300:
                            enough.set()

            async def killer() -> None:
                await enough.wait()
                gateway.child.kill(signal.SIGKILL)

            await asyncio.gather(killer(), *(loop() for _ in range(32)))

    asyncio.run(load())
    assert len(answered) >= 300
    # Restarting on the same data: every answer a client received is in the ledger.
    start_gateway([replica.url], data_dir=gateway.data_dir, database_url=database_url)
    recorded = {row["request_id"] for row in ledger_rows(gateway, expected=len(answered))}
    assert set(answered) <= recorded


def test_an_unwritable_ledger_withholds_answers_with_503(
    replica: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([replica.url])
    ask(gateway)
    with sqlite3.connect(gateway.data_dir / "ledger.sqlite3") as db:
        db.execute("DROP TABLE usage_events")
    with pytest.raises(openai.APIStatusError) as withheld:
        ask(gateway)
    assert (withheld.value.status_code, withheld.value.code) == (503, "ledger_unavailable")
    with pytest.raises(openai.APIError) as cut:
        list(ask(gateway, stream=True))
    assert cut.value.code == "ledger_unavailable"
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_a_run_past_its_wall_time_is_cut_and_then_refused(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    slow = start_emulator(time_scale=1.0)  # about 150 tokens a second
    gateway = start_gateway([slow.url], tenant_a="run_budget: {wall_time_s: 1.5}")
    ask(gateway, run="r1")  # the run's clock starts
    # A stream that would take many seconds ends at the deadline, cleanly.
    chunks = list(ask(gateway, run="r1", max_tokens=3000, stream=True))
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    streamed = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert 0 < streamed < 3000
    assert chunks[-1].choices == []
    assert "wall time of run:tenant-a/triage/r1" in chunks[-1].model_extra["inferplane"]["message"]
    # Later requests of the run are refused at once; another run has its own clock.
    with pytest.raises(openai.RateLimitError) as refused:
        ask(gateway, run="r1")
    assert refused.value.response.headers["x-inferplane-budget-dimension"] == "wall_time_s"
    assert "wall time of 1.5 s" in refused.value.message
    # A whole answer that outlives the deadline is stopped and refused.
    with pytest.raises(openai.RateLimitError) as cut:
        ask(gateway, run="r2", max_tokens=3000)
    assert cut.value.code == "budget_exceeded"
    rows = {r["run"]: r for r in ledger_rows(gateway, expected=3) if r["run"] != "r1"}
    assert rows["r2"]["status"] == 429 and int(rows["r2"]["calls"]) == 1  # type: ignore[call-overload]
    cut_stream = [r for r in ledger_rows(gateway, expected=3) if r["output_tokens"] == streamed]
    assert len(cut_stream) == 1 and cut_stream[0]["status"] == 200


def test_failover_retries_are_counted_and_bounded_by_the_run_budget(
    replica: launcher.Child, start_gateway: StartGateway, dead_url: DeadUrl
) -> None:
    dead = dead_url()
    gateway = start_gateway(
        [dead, replica.url], tenant_a="run_budget: {retries: 1}", backend_cooldown_s=0
    )
    # Round robin sends every other request to the dead backend first (with no
    # ejection time, it is tried again at once): those need a retry, and the run has one.
    outcomes = []
    for _ in range(6):
        try:
            ask(gateway, run="r1")
            outcomes.append("ok")
        except openai.RateLimitError as refused:
            assert refused.response.headers["x-inferplane-budget-dimension"] == "retries"
            outcomes.append("refused")
    assert outcomes.count("refused") >= 1
    rows = [r for r in ledger_rows(gateway, expected=6) if r["run"] == "r1"]
    assert sum(int(r["retries"]) for r in rows) == 1  # type: ignore[call-overload]
    assert {(r["status"], r["retries"]) for r in rows if r["status"] != 200} == {(429, 0)}
