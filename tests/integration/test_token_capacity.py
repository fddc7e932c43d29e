"""Token capacity over real processes: the gateway sends a replica no more tokens (prompt +
max output) than its KV cache holds, so the engine neither queues nor preempts, and the
excess waits in the gateway's queue, where priority and fairness apply."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest

from inferplane import launcher

from .conftest import KEY, MODEL, Gateway, StartEmulator, StartGateway, scrape

pytestmark = pytest.mark.integration

# 2,048 tokens of KV cache (128 blocks of 16). A request is 7 prompt tokens + 200 output
# (ignore_eos): 13 blocks at its end, so 9 fit at once and 24 together must preempt.
KV_TOKENS = 2048
NUM_REQUESTS = 24
DEPTH = f'inferplane_queue_depth{{gen_ai_request_model="{MODEL}",slo_class="batch"}}'


@pytest.fixture(scope="module")
def engine(start_emulator: StartEmulator) -> launcher.Child:
    return start_emulator("--kv-capacity-tokens", str(KV_TOKENS), time_scale=2.0)


def capacity_series(engine: launcher.Child, unit: str) -> str:
    backend = engine.url.removeprefix("http://")
    return (
        f'inferplane_backend_capacity{{backend="{backend}",gen_ai_request_model="{MODEL}",'
        f'unit="{unit}"}}'
    )


def load(gateway: Gateway, n: int = NUM_REQUESTS) -> list[int]:
    """``n`` concurrent batch requests; their statuses."""

    async def run() -> list[int]:
        async with httpx.AsyncClient(
            base_url=gateway.url,
            headers={"authorization": f"Bearer {KEY}", "x-inferplane-class": "batch"},
            timeout=60,
        ) as http:
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 200,
                "ignore_eos": True,
            }
            replies = await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(n))
            )
            return [r.status_code for r in replies]

    return asyncio.run(run())


@dataclass
class Watch:
    """What the sources showed while polled: the highest value and the mean over polls."""

    peak: dict[str, float] = field(default_factory=dict)
    total: dict[str, float] = field(default_factory=dict)
    polls: int = 0

    def mean(self, name: str) -> float:
        return self.total[name] / max(1, self.polls)


def watching(sources: dict[str, Callable[[], float]]) -> tuple[Watch, Callable[[], None]]:
    """Poll each source until stopped."""
    watch = Watch(dict.fromkeys(sources, 0.0), dict.fromkeys(sources, 0.0))
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            for name, read in sources.items():
                value = read()
                watch.peak[name] = max(watch.peak[name], value)
                watch.total[name] += value
            watch.polls += 1
            time.sleep(0.02)

    thread = threading.Thread(target=poll)
    thread.start()

    def done() -> None:
        stop.set()
        thread.join()

    return watch, done


def test_a_configured_token_capacity_keeps_the_engines_queue_in_the_gateway(
    engine: launcher.Child, start_gateway: StartGateway
) -> None:
    preemptions = "vllm:num_preemptions_total"
    waiting = "vllm:num_requests_waiting"
    # Without a token limit the engine takes all 24, runs out of KV cache as they grow,
    # preempts, and its queue fills (this is what the limit must prevent).
    plain = start_gateway([engine.url])
    before = scrape(engine.url, preemptions)
    unlimited, done = watching({"waiting": lambda: scrape(engine.url, waiting)})
    assert load(plain) == [200] * NUM_REQUESTS
    done()
    assert scrape(engine.url, preemptions) > before and unlimited.peak["waiting"] > 0

    limited = start_gateway([engine.url], backend=f"max_tokens_in_flight: {KV_TOKENS - 48}")
    before = scrape(engine.url, preemptions)
    watch, done = watching(
        {
            "waiting": lambda: scrape(engine.url, waiting),
            "running": lambda: scrape(engine.url, "vllm:num_requests_running"),
            "queued": lambda: scrape(limited.url, DEPTH),
        }
    )
    assert load(limited) == [200] * NUM_REQUESTS
    done()
    # Nothing preempted: what it admitted always fit. Requests only pass through its
    # queue (for less than a step, on arrival), while the gateway's holds the rest.
    assert scrape(engine.url, preemptions) == before
    assert watch.mean("waiting") < 0.2 * unlimited.mean("waiting"), (watch, unlimited)
    assert watch.peak["queued"] >= 10 and 1 <= watch.peak["running"] <= 9
    assert scrape(limited.url, capacity_series(engine, "tokens")) == KV_TOKENS - 48


def test_a_learned_token_capacity_moves_the_queue_into_the_gateway(
    engine: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([engine.url], backend="max_tokens_in_flight: auto", health_check_s=0.2)
    tokens = capacity_series(engine, "tokens")
    assert scrape(gateway.url, tokens) == float("inf")  # nothing learned yet
    # First burst: no limit yet; the engine over-commits, and the gateway learns from it.
    first, done = watching({"waiting": lambda: scrape(engine.url, "vllm:num_requests_waiting")})
    assert load(gateway) == [200] * NUM_REQUESTS
    done()
    learned = scrape(gateway.url, tokens)
    assert 200 <= learned <= 4 * KV_TOKENS
    # Second burst: the gateway holds back what does not fit.
    second, done = watching(
        {
            "queued": lambda: scrape(gateway.url, DEPTH),
            "waiting": lambda: scrape(engine.url, "vllm:num_requests_waiting"),
        }
    )
    assert load(gateway) == [200] * NUM_REQUESTS
    done()
    assert second.peak["queued"] >= 5
    assert second.mean("waiting") < 0.5 * first.mean("waiting"), (first, second)
