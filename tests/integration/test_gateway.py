"""The gateway in front of real emulated replicas, driven by the official openai client."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from inferplane.perf import count_text_tokens

from .conftest import (
    ADMIN_KEY,
    KEY,
    KEY_B,
    MODEL,
    Gateway,
    StartEmulator,
    StartGateway,
    client,
    ledger_rows,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(start_emulator: StartEmulator, start_gateway: StartGateway) -> Gateway:
    replicas = [start_emulator(), start_emulator()]
    return start_gateway([r.url for r in replicas])


def test_chat_completion_returns_text_and_exact_usage(fleet: Gateway) -> None:
    reply = client(fleet.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=12,
        extra_body={"ignore_eos": True},
    )
    text = reply.choices[0].message.content
    assert text and count_text_tokens(text) == 12
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_stream_with_include_usage_ends_with_the_usage_chunk(fleet: Gateway) -> None:
    stream = client(fleet.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=20,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert count_text_tokens(text) == 20
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def _output_tokens_recorded(base_url: str) -> float:
    metrics = httpx.get(base_url + "/metrics").text
    pattern = r'gen_ai_client_token_usage_sum\{[^}]*gen_ai_token_type="output"[^}]*\} (\S+)'
    return sum(float(v) for v in re.findall(pattern, metrics))


def test_stream_without_include_usage_hides_usage_but_still_records_it(
    fleet: Gateway,
) -> None:
    before = _output_tokens_recorded(fleet.url)
    stream = client(fleet.url).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=7,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert _output_tokens_recorded(fleet.url) == before + 7


def test_text_completion(fleet: Gateway) -> None:
    reply = client(fleet.url).completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert count_text_tokens(reply.choices[0].text) == 5
    assert reply.usage is not None and reply.usage.prompt_tokens == count_text_tokens(
        "Once upon a time"
    )


def test_embeddings_pass_through(fleet: Gateway) -> None:
    reply = client(fleet.url).embeddings.create(model=MODEL, input=["red apple", "green pear"])
    vectors = [d.embedding for d in reply.data]
    assert len(vectors) == 2 and len(vectors[0]) == 256
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-4  # unit length
    assert vectors[0] != vectors[1]
    assert reply.usage.prompt_tokens == count_text_tokens("red apple") + count_text_tokens(
        "green pear"
    )


def test_models_lists_the_logical_models(fleet: Gateway) -> None:
    assert [m.id for m in client(fleet.url).models.list()] == [MODEL]


def test_wrong_key_is_401_and_missing_key_too(fleet: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError) as bad:
        client(fleet.url, key="sk-not-a-key").models.list()
    assert bad.value.code == "invalid_api_key"
    resp = httpx.post(fleet.url + "/v1/chat/completions", json={"model": MODEL})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "missing_api_key"


def test_model_not_allowed_for_tenant_is_403(fleet: Gateway) -> None:
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(fleet.url, key=KEY_B).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    assert denied.value.code == "model_not_allowed"
    assert client(fleet.url, key=KEY_B).models.list().data == []


def test_admin_key_may_use_every_model(fleet: Gateway) -> None:
    reply = client(fleet.url, key=ADMIN_KEY).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 1


def test_unknown_model_is_404_with_model_not_found(fleet: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client(fleet.url).chat.completions.create(
            model="gpt-9", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.code == "model_not_found"
    assert "llama-3.1-8b" in missing.value.message


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'{"stream": true}', "missing_model"),
    ],
)
def test_malformed_requests_are_400_in_openai_format(
    fleet: Gateway, body: bytes, code: str
) -> None:
    resp = httpx.post(
        fleet.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert set(error) == {"message", "type", "param", "code"}


def test_oversized_body_is_413(fleet: Gateway) -> None:
    with pytest.raises(openai.APIStatusError) as too_big:
        client(fleet.url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x" * 100_000}], max_tokens=1
        )
    assert too_big.value.status_code == 413
    assert too_big.value.code == "request_too_large"


def test_upstream_4xx_passes_through(fleet: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client(fleet.url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10**7
        )
    assert bad.value.code == "context_length_exceeded"


def test_every_response_carries_a_request_id(fleet: Gateway) -> None:
    ok = httpx.get(fleet.url + "/health")
    refused = httpx.get(fleet.url + "/v1/models")
    echoed = httpx.get(fleet.url + "/health", headers={"x-request-id": "trace-42"})
    preferred = httpx.get(
        fleet.url + "/health",
        headers={"x-request-id": "trace-42", "x-client-request-id": "mine-7"},
    )
    assert re.fullmatch(r"[0-9a-f]{32}", ok.headers["x-request-id"])
    assert "x-client-request-id" not in ok.headers
    assert refused.status_code == 401 and refused.headers["x-request-id"]
    # The client's id is echoed beside the gateway's, which stays unique.
    assert echoed.headers["x-client-request-id"] == "trace-42"
    assert re.fullmatch(r"[0-9a-f]{32}", echoed.headers["x-request-id"])
    assert preferred.headers["x-client-request-id"] == "mine-7"


def test_gateway_metrics_use_genai_names(fleet: Gateway) -> None:
    stream = client(fleet.url).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    assert list(stream)
    metrics = httpx.get(fleet.url + "/metrics").text
    for name in (
        "gen_ai_client_token_usage_bucket",
        "gen_ai_server_time_to_first_token_bucket",
        "gen_ai_server_time_per_output_token_bucket",
        "gen_ai_server_request_duration_bucket",
        "inferplane_requests_in_flight",
    ):
        assert name in metrics, name
    assert 'gen_ai_token_type="input"' in metrics
    assert 'tenant="tenant-a"' in metrics


def test_every_forwarded_request_is_recorded_in_the_ledger(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    gateway = start_gateway([start_emulator().url])
    whole = client(gateway.url).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    streamed = client(gateway.url).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=9,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    assert len(list(streamed.parse())) > 0
    with pytest.raises(openai.BadRequestError):
        client(gateway.url).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10**7
        )
    rows = ledger_rows(gateway, expected=3)
    by_id = {row["request_id"]: row for row in rows}
    first = by_id[whole.headers["x-request-id"]]
    assert (first["tenant"], first["key_name"], first["model"]) == ("tenant-a", "a", MODEL)
    assert (first["status"], first["output_tokens"], first["operation"]) == (200, 5, "chat")
    assert first["input_tokens"] == whole.parse().usage.prompt_tokens
    assert (first["finish_reason"], first["retries"]) == ("length", 0)
    second = by_id[streamed.headers["x-request-id"]]
    assert (second["status"], second["output_tokens"], second["finish_reason"]) == (
        200,
        9,
        "length",
    )
    assert second["ttft_s"] is not None and second["ttft_s"] <= second["duration_s"]
    refused = [r for r in rows if r["status"] == 400]
    assert len(refused) == 1 and refused[0]["error_type"] == "context_length_exceeded"
