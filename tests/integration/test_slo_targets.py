"""TTFT targets over real processes: a request that would wait in the gateway's queue past
its class's first-token target is refused at once, and met or missed targets are counted."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from .conftest import MODEL, Gateway, StartEmulator, StartGateway, client, scrape

pytestmark = pytest.mark.integration

CLASSES = """
slo_classes:
  realtime: {priority: 0, max_queue_s: 30, ttft_s: 0.3}
  batch: {priority: 2, max_queue_s: 60}
default_slo_class: batch
"""


def stream(gateway: Gateway, cls: str, max_tokens: int) -> None:
    reply = client(gateway.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=max_tokens,
        stream=True,
        extra_body={"ignore_eos": True},
        extra_headers={"X-Inferplane-Class": cls},
    )
    with reply:
        for _ in reply:
            pass


def slo(gateway: Gateway, outcome: str) -> float:
    return scrape(
        gateway.url,
        f'inferplane_slo_requests_total{{gen_ai_request_model="{MODEL}",outcome="{outcome}",'
        'slo_class="realtime"}',
    )


def test_a_request_that_would_miss_its_first_token_target_is_refused_at_once(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    engine = start_emulator(time_scale=1.0)  # about 6.5 ms a token
    gateway = start_gateway(
        [engine.url], top=CLASSES, backend="max_concurrency: 1", gateway="hedge_min_samples: 3"
    )
    for _ in range(3):  # measures: a request holds the slot ~0.65 s, its first token is quick
        stream(gateway, "batch", max_tokens=100)
    assert slo(gateway, "met") + slo(gateway, "missed") == 0  # batch has no target
    stream(gateway, "realtime", max_tokens=2)  # the slot is free: starts at once, meets it
    assert slo(gateway, "met") == 1
    busy = threading.Thread(target=stream, args=(gateway, "batch", 300))
    busy.start()
    try:
        for _ in range(100):  # until the long request holds the slot
            if scrape(engine.url, "vllm:num_requests_running") == 1:
                break
            time.sleep(0.02)
        # A queue of one: about 0.65 s to wait, plus a first token, against 0.3 s; its
        # max_queue_s (30 s) alone would have let it wait.
        with pytest.raises(openai.RateLimitError) as refused:
            stream(gateway, "realtime", max_tokens=2)
        assert refused.value.code == "slo_unattainable"
        assert "first token" in refused.value.message
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert slo(gateway, "missed") == 1
    finally:
        busy.join(timeout=30)
