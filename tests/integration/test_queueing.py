"""The gateway's queue in front of replicas with a concurrency limit: priority between
SLO classes, refusal by predicted wait, expiry, over real processes."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import openai
import pytest

from inferplane import launcher

from .conftest import MODEL, Gateway, StartEmulator, StartGateway, client, ledger_rows

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]
CLASSES = """
slo_classes:
  realtime: {priority: 0, max_queue_s: %s}
  interactive: {priority: 1, max_queue_s: %s}
  batch: {priority: 2, max_queue_s: 60}
"""


@pytest.fixture(scope="module")
def slow(start_emulator: StartEmulator) -> launcher.Child:
    return start_emulator(time_scale=1.0)  # about 150 tokens a second, one at a time here


def ask(gateway: Gateway, cls: str, max_tokens: int, **kwargs: Any) -> Any:
    return client(gateway.url).chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
        extra_headers={"X-Inferplane-Class": cls},
        **kwargs,
    )


def in_background(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:  # the test looks at it
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_realtime_overtakes_queued_batch_work(
    slow: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([slow.url], top=CLASSES % (10, 10), backend="max_concurrency: 1")
    finished: list[str] = []

    def job(name: str, cls: str, max_tokens: int = 20) -> None:
        ask(gateway, cls, max_tokens=max_tokens)
        finished.append(name)

    first, _ = in_background(job, "b0", "batch", 400)  # holds the only slot for seconds
    time.sleep(0.2)
    batch = [in_background(job, f"b{i}", "batch")[0] for i in (1, 2, 3)]
    depth = f'inferplane_queue_depth{{gen_ai_request_model="{MODEL}",slo_class="batch"}} 3.0'
    for _ in range(50):  # the queue is visible to Prometheus
        if depth in httpx.get(gateway.url + "/metrics").text:
            break
        time.sleep(0.05)
    else:
        pytest.fail("three queued batch requests never showed in inferplane_queue_depth")
    realtime, _ = in_background(job, "rt", "realtime")
    for t in [first, *batch, realtime]:
        t.join(timeout=30)
    assert finished[:2] == ["b0", "rt"]  # queued behind b0 only, ahead of b1-b3
    classes = {r["slo_class"] for r in ledger_rows(gateway, expected=5)}
    assert classes == {"batch", "realtime"}


def test_a_class_that_cannot_be_served_in_time_is_refused_at_once_with_retry_after(
    slow: launcher.Child, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([slow.url], top=CLASSES % (0.3, 60), backend="max_concurrency: 1")
    ask(gateway, "interactive", max_tokens=60)  # measures how long a request holds a slot
    long, _ = in_background(ask, gateway, "batch", 300)
    time.sleep(0.3)
    with pytest.raises(openai.RateLimitError) as refused:
        ask(gateway, "realtime", max_tokens=10)
    assert refused.value.code == "slo_unattainable"
    assert int(refused.value.response.headers["retry-after"]) >= 1
    long.join(timeout=30)


def test_a_request_that_waits_past_its_class_bound_leaves_the_queue(
    slow: launcher.Child, start_gateway: StartGateway
) -> None:
    # Nothing measured yet, so nothing is predicted: the request queues, then expires.
    gateway = start_gateway([slow.url], top=CLASSES % (0.5, 0.5), backend="max_concurrency: 1")
    long, _ = in_background(ask, gateway, "batch", 300)
    time.sleep(0.3)
    with pytest.raises(openai.RateLimitError) as expired:
        ask(gateway, "interactive", max_tokens=10)
    assert expired.value.code == "slo_unattainable" and "Waited" in expired.value.message
    assert long.is_alive()  # refused at its bound, not once the slot came free
    long.join(timeout=30)
    rows = ledger_rows(gateway, expected=2)
    assert [(r["status"], r["error_type"]) for r in rows if r["slo_class"] == "interactive"] == [
        (429, "slo_unattainable")
    ]


def test_an_unknown_class_is_400(slow: launcher.Child, start_gateway: StartGateway) -> None:
    gateway = start_gateway([slow.url])
    with pytest.raises(openai.BadRequestError) as bad:
        ask(gateway, "platinum", max_tokens=2)
    assert bad.value.code == "invalid_header"


def test_slots_learned_from_the_replicas_metrics_move_the_queue_into_the_gateway(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    engine = start_emulator("--max-num-seqs", "4", time_scale=1.0)
    gateway = start_gateway([engine.url], backend="max_concurrency: auto", health_check_s=0.2)
    threads = [in_background(ask, gateway, "batch", 300)[0] for _ in range(10)]
    # The engine runs 4 and queues 6; once the gateway has read that from /metrics it
    # stops sending more than 4, so later requests wait in the gateway's queue instead.
    time.sleep(0.8)
    threads += [in_background(ask, gateway, "batch", 20)[0] for _ in range(4)]
    depth = f'inferplane_queue_depth{{gen_ai_request_model="{MODEL}",slo_class="batch"}}'
    seen = 0.0
    for _ in range(40):
        for line in httpx.get(gateway.url + "/metrics").text.splitlines():
            if line.startswith(depth):
                seen = max(seen, float(line.rsplit(" ", 1)[1]))
        if seen >= 4:
            break
        time.sleep(0.05)
    assert seen >= 4
    for t in threads:
        t.join(timeout=60)
    assert len(ledger_rows(gateway, expected=14)) == 14
