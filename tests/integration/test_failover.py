"""Replicas that fail: ejected by their breaker, retried around, re-admitted by a probe;
a replica killed under load loses no request that had not begun to answer."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import httpx
import pytest

from .conftest import KEY, MODEL, DeadUrl, StartEmulator, StartGateway, client, ledger_rows

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


def test_a_replica_answering_500_is_ejected_retried_around_and_later_readmitted(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    bad = start_emulator("--error-rate", "1.0", time_scale=50.0)
    good = start_emulator(time_scale=50.0)
    gateway = start_gateway(
        [bad.url, good.url],
        top="",
        backend_cooldown_s=1.0,
        outlier_errors=2,
    )
    openai_client = client(gateway.url)
    for _ in range(8):  # every request succeeds: a 500 is retried on the other replica
        openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    rows = ledger_rows(gateway, expected=8)
    assert [r["status"] for r in rows] == [200] * 8
    # Two errors in a row eject it: two requests went there first, none after.
    retries = [r["retries"] for r in rows]
    assert sum(retries) == 2 and retries[-4:] == [0, 0, 0, 0]  # type: ignore[arg-type]
    # It comes back healthy on the same address; after its ejection a probe finds it.
    bad.kill(signal.SIGKILL)
    bad.process.wait()
    port = int(bad.url.rsplit(":", 1)[1])
    healed = start_emulator(time_scale=50.0, port=port)
    label = f"127.0.0.1:{port}"
    for _ in range(100):
        openai_client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
        if any(r["backend"] == label and r["status"] == 200 for r in ledger_rows(gateway, 0)):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the healed replica was never re-admitted")
    assert healed.process.poll() is None


def test_killing_a_replica_under_load_loses_no_request_that_had_not_begun_answering(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    doomed = start_emulator(time_scale=5.0)
    survivor = start_emulator(time_scale=5.0)
    gateway = start_gateway([doomed.url, survivor.url])
    statuses: list[int] = []

    async def load() -> None:
        stop = time.monotonic() + 4.0
        async with httpx.AsyncClient(
            base_url=gateway.url, headers={"authorization": f"Bearer {KEY}"}, timeout=30
        ) as http:

            async def loop() -> None:
                while time.monotonic() < stop:
                    reply = await http.post(
                        "/v1/chat/completions",
                        json={"model": MODEL, "messages": HI, "max_tokens": 20},
                    )
                    statuses.append(reply.status_code)

            async def killer() -> None:
                await asyncio.sleep(1.5)
                doomed.kill(signal.SIGKILL)

            await asyncio.gather(killer(), *(loop() for _ in range(16)))

    asyncio.run(load())
    assert len(statuses) > 50
    # Whole answers begin only when complete: every request in flight at the killed
    # replica had nothing from it yet, and was served by the other.
    assert set(statuses) == {200}
    retried = [r for r in ledger_rows(gateway, len(statuses)) if r["retries"]]
    assert retried and {r["backend"] for r in retried} == {survivor.url.removeprefix("http://")}


def test_health_checks_keep_traffic_off_a_backend_that_is_down_until_it_is_up(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    held = socket.socket()  # bound, not listening: refuses, and nothing else gets the port
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    live = start_emulator(time_scale=50.0)
    gateway = start_gateway(
        [f"http://127.0.0.1:{port}", live.url], backend_cooldown_s=30.0, health_check_s=0.2
    )
    time.sleep(0.6)  # a few checks: the dead one is ejected before any request
    c = client(gateway.url)
    for _ in range(6):
        c.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert [r["retries"] for r in ledger_rows(gateway, expected=6)] == [0] * 6
    # It comes up: a passing check lets it have its probe long before its 30 s ejection ends.
    held.close()
    start_emulator(time_scale=50.0, port=port)
    for _ in range(100):
        c.chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
        if any(r["backend"] == f"127.0.0.1:{port}" for r in ledger_rows(gateway, 0)):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the backend that came up never got traffic")


def test_a_model_that_cannot_serve_falls_back_along_its_chain(
    start_emulator: StartEmulator, start_gateway: StartGateway, dead_url: DeadUrl
) -> None:
    spare = start_emulator(time_scale=50.0)
    dead = dead_url()
    gateway = start_gateway(
        [dead],
        model="fallback: [spare]",
        extra_models=(
            f"  spare:\n    backends: [{{url: '{spare.url}', engine: vllm, model: {MODEL}}}]"
        ),
    )
    reply = client(gateway.url).chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, max_tokens=3
    )
    assert reply.parse().usage.completion_tokens == 3  # type: ignore[union-attr]
    rid = reply.headers["x-request-id"]
    rows = {r["request_id"]: r for r in ledger_rows(gateway, expected=2)}
    assert (rows[rid]["model"], rows[rid]["status"]) == (MODEL, 502)
    assert (rows[f"{rid}.1"]["model"], rows[f"{rid}.1"]["status"]) == ("spare", 200)
