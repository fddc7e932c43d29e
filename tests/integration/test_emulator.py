"""The emulated replica on its own, as a vLLM client would see it."""

from __future__ import annotations

import concurrent.futures
import re
import time

import httpx
import openai
import pytest

from .conftest import MODEL, StartEmulator

pytestmark = pytest.mark.integration


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    assert found, f"{name} missing"
    return float(found.group(1))


def test_kv_pressure_preempts_yet_every_request_finishes(start_emulator: StartEmulator) -> None:
    # 320 tokens of KV cache (20 blocks): each request grows to about 165 tokens (11 blocks),
    # so any two running together run out. Slow enough (about 0.5 s each) that they overlap.
    replica = start_emulator("--kv-capacity-tokens", "320", time_scale=2.0)
    api = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)

    def ask(i: int) -> int:
        reply = api.completions.create(
            model=MODEL,
            prompt=f"request number {i} " * 3,
            max_tokens=150,
            extra_body={"ignore_eos": True},
        )
        assert reply.usage is not None
        return reply.usage.completion_tokens

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(ask, range(3))) == [150, 150, 150]
    api.close()
    assert metric(replica.url, "vllm:num_preemptions_total") >= 1
    assert metric(replica.url, "vllm:generation_tokens_total") == 450
    assert metric(replica.url, "vllm:num_requests_running") == 0
    assert metric(replica.url, "vllm:kv_cache_usage_perc") == 0
    for name in (
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
        "vllm:request_queue_time_seconds_count",
        "vllm:prompt_tokens_total",
        "vllm:num_requests_waiting",
    ):
        metric(replica.url, name)


def test_answers_like_vllm_for_bad_requests(start_emulator: StartEmulator) -> None:
    replica = start_emulator()
    api = openai.OpenAI(base_url=replica.url + "/v1", api_key="none", max_retries=0)
    assert [m.id for m in api.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        api.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as too_long:
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=200_000
        )
    assert too_long.value.code == "context_length_exceeded"
    # A prompt that leaves no room to answer, without max_tokens: the same error.
    with pytest.raises(openai.BadRequestError) as no_room:
        api.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 140_000}]
        )
    assert no_room.value.code == "context_length_exceeded"
    # n: null is the default n, as vLLM takes it.
    reply = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, n=None
    )
    assert len(reply.choices) == 1
    api.close()


def test_a_whole_answer_request_whose_client_hangs_up_is_aborted(
    start_emulator: StartEmulator,
) -> None:
    replica = start_emulator(time_scale=1.0)  # 3000 tokens would take about 20 s
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            replica.url + "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 3000,
                "ignore_eos": True,
            },
            timeout=0.5,
        )
    running = "vllm:num_requests_running"
    for _ in range(50):
        if metric(replica.url, running) == 0:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the replica kept generating for a client that left")
