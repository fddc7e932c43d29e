"""Hedging over real processes and the official client: a realtime request whose replica is
slow gets a second attempt on a fast one, is answered at the fast one's pace, and the slow
replica stops generating; with hedging off it waits for the slow one."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import pytest

from inferplane import launcher

from .conftest import (
    MODEL,
    Gateway,
    StartEmulator,
    StartGateway,
    client,
    ledger_rows,
    scrape,
)

pytestmark = pytest.mark.integration

CLASSES = """
slo_classes:
  realtime: {priority: 0, max_queue_s: 5, ttft_s: 0.5, hedge: %s}
  interactive: {priority: 1, max_queue_s: 5, ttft_s: 2}
  batch: {priority: 2, max_queue_s: 60}
"""
HEDGING = "hedge_min_samples: 10\n  hedge_min_delay_s: 0.02"
RUNNING = "vllm:num_requests_running"


@dataclass(frozen=True)
class Fleet:
    slow: launcher.Child
    fast: launcher.Child
    slow_sessions: list[str]
    fast_sessions: list[str]

    def gateway(self, start_gateway: StartGateway, hedge: bool, tenant_a: str = "") -> Gateway:
        return start_gateway(
            [self.slow.url, self.fast.url],
            top=CLASSES % str(hedge).lower(),
            model="routing: session_affinity",
            gateway=HEDGING,
            tenant_a=tenant_a,
        )


@pytest.fixture(scope="module")
def fleet(start_emulator: StartEmulator, start_gateway: StartGateway) -> Fleet:
    # A first token: about 6.5 ms of engine time (Llama-3.1-8B, H100), 325 ms on the slow
    # replica (50 times slower than real time), 3 ms on the fast one.
    slow = start_emulator(time_scale=0.02)
    fast = start_emulator(time_scale=2.0)
    # Which sessions live on which replica: the affinity ring depends only on the backends.
    probe = start_gateway([slow.url, fast.url], model="routing: session_affinity")
    sessions = [f"session-{i}" for i in range(16)]
    for session in sessions:
        ask(probe, session, "batch", max_tokens=1)
    rows = ledger_rows(probe, expected=len(sessions))
    slow_label = slow.url.removeprefix("http://")
    on_slow = [s for s, r in zip(sessions, rows, strict=True) if r["backend"] == slow_label]
    on_fast = [s for s in sessions if s not in on_slow]
    assert len(on_slow) >= 2 and len(on_fast) >= 2
    return Fleet(slow, fast, on_slow, on_fast)


def ask(
    gateway: Gateway,
    session: str,
    cls: str,
    max_tokens: int,
    *,
    run: str | None = None,
    first_token_only: bool = False,
) -> float:
    """Stream a request; its time to the first content chunk, as the client sees it."""
    headers = {"X-Inferplane-Class": cls, "X-Inferplane-Session": session}
    if run is not None:
        headers["X-Inferplane-Run"] = run
    t0 = time.perf_counter()
    stream = client(gateway.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=max_tokens,
        stream=True,
        extra_body={"ignore_eos": True},
        extra_headers=headers,
    )
    ttft = None
    with stream:
        for chunk in stream:
            if ttft is None and chunk.choices and chunk.choices[0].delta.content:
                ttft = time.perf_counter() - t0
                if first_token_only:
                    break  # leaving: the gateway drops the upstream, the engine aborts
    assert ttft is not None
    return ttft


def wait_idle(replica: launcher.Child, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while scrape(replica.url, RUNNING) > 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def warm(gateway: Gateway, fleet: Fleet, n: int = 12) -> None:
    """Enough first bytes observed (all fast) for the hedge delay to exist."""
    for i in range(n):
        ask(gateway, fleet.fast_sessions[i % len(fleet.fast_sessions)], "batch", max_tokens=2)


def test_hedged_realtime_requests_get_the_fast_replicas_first_token_and_abort_the_slow(
    fleet: Fleet, start_gateway: StartGateway
) -> None:
    off = fleet.gateway(start_gateway, hedge=False)
    warm(off, fleet)
    slow_sessions = (fleet.slow_sessions * 4)[:6]
    unhedged = [
        ask(off, s, "realtime", max_tokens=50, first_token_only=True) for s in slow_sessions
    ]
    assert wait_idle(fleet.slow, timeout_s=5.0)
    assert scrape(off.url, "inferplane_hedges_total") == 0

    on = fleet.gateway(start_gateway, hedge=True)
    warm(on, fleet)
    hedged = [ask(on, s, "realtime", max_tokens=50) for s in slow_sessions]
    # The losers were cancelled: the slow replica is idle long before the 16 s each of
    # their 50 tokens would have taken it.
    assert wait_idle(fleet.slow, timeout_s=3.0)
    assert statistics.mean(hedged) < 0.5 * statistics.mean(unhedged), (hedged, unhedged)
    rows = ledger_rows(on, expected=12 + len(slow_sessions))[-len(slow_sessions) :]
    fast_label = fleet.fast.url.removeprefix("http://")
    assert {(r["backend"], r["retries"], r["status"]) for r in rows} == {(fast_label, 1, 200)}
    assert all(r["output_tokens"] == 50 for r in rows)
    assert scrape(on.url, "inferplane_hedges_total") == len(slow_sessions)
    assert scrape(on.url, "inferplane_hedges_won_total") == len(slow_sessions)
    # Other classes are not hedged.
    ask(on, fleet.slow_sessions[0], "interactive", max_tokens=1)
    assert scrape(on.url, "inferplane_hedges_total") == len(slow_sessions)


def test_hedges_count_against_the_runs_retry_budget(
    fleet: Fleet, start_gateway: StartGateway
) -> None:
    on = fleet.gateway(start_gateway, hedge=True, tenant_a="run_budget: {retries: 1}")
    warm(on, fleet)
    session = fleet.slow_sessions[0]
    first = ask(on, session, "realtime", max_tokens=3, run="r1")  # hedged: its one retry
    second = ask(on, session, "realtime", max_tokens=3, run="r1")  # none left: waits
    assert second > first
    rows = ledger_rows(on, expected=14)[-2:]
    slow_label, fast_label = (r.url.removeprefix("http://") for r in (fleet.slow, fleet.fast))
    assert [(r["backend"], r["retries"], r["status"]) for r in rows] == [
        (fast_label, 1, 200),
        (slow_label, 0, 200),
    ]
    assert scrape(on.url, "inferplane_hedges_total") == 1
