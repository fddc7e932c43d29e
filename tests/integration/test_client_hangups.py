"""Clients that hang up before their response starts, over real processes: a server does
not cancel the app when a client leaves, so the gateway must notice by itself, stop
what it does for that client (its place in the queue, the backend's generation), and
not charge it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import orjson
import pytest

from .conftest import KEY, MODEL, Gateway, StartEmulator, StartGateway, client, ledger_rows, scrape

pytestmark = pytest.mark.integration

CLASSES = """
slo_classes:
  interactive: {priority: 1, max_queue_s: 60}
  batch: {priority: 2, max_queue_s: 60}
"""
PRICE = "price: {input_per_1m: 1, output_per_1m: 1}"  # a micro-dollar a token
RUNNING = f'vllm:num_requests_running{{model_name="{MODEL}"}}'


def _request(max_tokens: int, *, stream: bool = False) -> bytes:
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": stream,
        }
    )
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        b"authorization: Bearer %s\r\ncontent-type: application/json\r\n"
        b"x-inferplane-class: batch\r\ncontent-length: %d\r\n\r\n%s"
        % (KEY.encode(), len(body), body)
    )


@contextlib.contextmanager
def _clients(gateway: Gateway, requests: list[bytes]) -> Iterator[list[socket.socket]]:
    """Clients that send their whole request, then (leaving the block) hang up
    without reading a byte of the answer."""
    host, port = gateway.url.removeprefix("http://").split(":")
    socks = [socket.create_connection((host, int(port))) for _ in requests]
    try:
        for sock, request in zip(socks, requests, strict=True):
            sock.sendall(request)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never: {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_queued_requests_whose_clients_leave_never_reach_the_backend(
    start_emulator: StartEmulator, start_gateway: StartGateway, stream: bool
) -> None:
    replica = start_emulator(time_scale=1.0)  # about 150 tokens a second
    gateway = start_gateway(
        [replica.url], top=CLASSES, model=PRICE, backend="max_concurrency: 1", read_timeout_s=30
    )
    api = client(gateway.url)

    def ask(max_tokens: int) -> None:
        api.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=max_tokens,
            extra_body={"ignore_eos": True},
            extra_headers={"X-Inferplane-Class": "batch"},
        )

    # The first request holds the only slot for seconds.
    first = threading.Thread(target=ask, args=(600,))
    first.start()
    _wait_for("the first request runs", lambda: scrape(replica.url, RUNNING) == 1)
    one_prompt = scrape(replica.url, "vllm:prompt_tokens_total")
    # Three clients queue behind it, then give up.
    with _clients(gateway, [_request(600, stream=stream)] * 3):
        _wait_for(
            "three requests queue", lambda: scrape(gateway.url, "inferplane_queue_depth") == 3
        )
    # They leave the queue at once, while the slot is still taken.
    while scrape(gateway.url, "inferplane_queue_depth") > 0:
        assert first.is_alive(), "the abandoned requests stayed queued until the slot came free"
        time.sleep(0.05)
    assert scrape(replica.url, "vllm:prompt_tokens_total") == one_prompt, "sent to the backend"
    ask(10)  # served after the first one only
    first.join(timeout=30)

    # The backend saw two prompts: the first request's and the live one's.
    assert scrape(replica.url, "vllm:prompt_tokens_total") == 2 * one_prompt
    assert scrape(replica.url, "vllm:request_success_total") == 2
    rows = ledger_rows(gateway, expected=5)
    outcomes = Counter((r["status"], r["error_type"]) for r in rows)
    assert outcomes == {(200, None): 2, (499, "client_disconnected"): 3}
    for row in rows:
        if row["status"] == 499:  # never sent anywhere: nothing generated, nothing charged
            assert row["backend"] is None
            assert not row["output_tokens"]
            assert row["cost_micros"] == 0


def test_a_whole_answer_whose_client_leaves_stops_the_backend(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    replica = start_emulator(time_scale=1.0)
    # The backend may stay silent for the whole generation (about 20 s) before answering.
    gateway = start_gateway([replica.url], model=PRICE, read_timeout_s=60)
    with _clients(gateway, [_request(3000)]):
        _wait_for("the backend generates", lambda: scrape(replica.url, RUNNING) == 1)
    # The client is gone: the gateway drops the upstream connection, the replica aborts.
    _wait_for(
        "the replica stops generating for a client that left",
        lambda: scrape(replica.url, RUNNING) == 0,
    )
    assert scrape(replica.url, "vllm:request_success_total") == 0
    (row,) = ledger_rows(gateway, expected=1)
    assert (row["status"], row["error_type"]) == (499, "client_disconnected")
    # The gateway goes on serving.
    assert (
        client(gateway.url)
        .chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        .choices
    )
