"""Hedging, token capacity and the SLO counter inside one gateway process, over a stand-in
``Upstream`` whose replicas answer after set delays: which attempt wins, that the loser is
closed, that slots and retries are accounted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from inferplane.gateway import hash_key
from inferplane.wire import DONE, sse_data

from . import inprocess
from .inprocess import KEY, MODEL


class FakeResponse:
    def __init__(self, body: dict[str, Any], delay_s: float, status: int = 200) -> None:
        self.status = status
        self.stream = body.get("stream") is True
        self.content_type = "text/event-stream" if self.stream else "application/json"
        self.delay_s = delay_s
        self.closed = False
        self.finished = False

    async def read(self) -> bytes:
        if self.status >= 500:
            self.finished = True
            return b'{"error": {"message": "down", "code": "down"}}'
        try:
            await asyncio.sleep(self.delay_s)
        except BaseException:
            self.close()
            raise
        self.finished = True
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        message = {"role": "assistant", "content": "a b"}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return orjson.dumps({"object": "chat.completion", "choices": [choice], "usage": usage})

    async def chunks(self) -> AsyncIterator[bytes]:
        def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return sse_data({"object": "chat.completion.chunk", "choices": [choice]})

        try:
            yield chunk({"role": "assistant", "content": ""})  # at once, as the emulator does
            await asyncio.sleep(self.delay_s)
            yield chunk({"content": "a"}) + chunk({"content": " b"}) + chunk({}, "stop")
            usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            yield sse_data({"object": "chat.completion.chunk", "choices": [], "usage": usage})
            yield DONE
            self.finished = True
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self.finished:
            self.closed = True


class FakeUpstream:
    """Replica ``host`` answers its first token after ``delays[host]`` seconds; those in
    ``failing`` answer 500 after that long instead."""

    def __init__(self, delays: Mapping[str, float], failing: frozenset[str] = frozenset()) -> None:
        self.delays = dict(delays)
        self.failing = failing
        self.sent: list[tuple[str, FakeResponse]] = []

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> FakeResponse:
        host = url.split("//", 1)[1].split(":", 1)[0]
        status = 500 if host in self.failing else 200
        resp = FakeResponse(orjson.loads(body), self.delays[host], status)
        self.sent.append((host, resp))
        if status >= 500:
            await asyncio.sleep(self.delays[host])
        return resp

    async def aclose(self) -> None:
        pass


def config_text(tmp_path: Path, *, backend: str = "", gateway: str = "", hedge: bool = True) -> str:
    return f"""
data_dir: {tmp_path}
usage_ledger: false
gateway: {{hedge_min_samples: 3, hedge_min_delay_s: 0.05, {gateway}}}
slo_classes:
  realtime: {{priority: 0, max_queue_s: 5, ttft_s: 0.5, hedge: {str(hedge).lower()}}}
  batch: {{priority: 1, max_queue_s: 60}}
default_slo_class: batch
models:
  {MODEL}:
    backends:
      - {{url: 'http://slow:1', {backend}}}
      - {{url: 'http://fast:2', {backend}}}
tenants:
  t:
    keys: [{{name: k, sha256: {hash_key(KEY)}}}]
"""


class Harness(inprocess.Harness):
    def warm(self, seconds: float, n: int = 3, stream: bool = True) -> None:
        """As if ``n`` requests had had their first byte after ``seconds``."""
        for _ in range(n):
            self.gateway.routes[MODEL].first_byte[stream].observe(seconds)

    async def ask(self, cls: str = "realtime", stream: bool = True) -> httpx.Response:  # type: ignore[override]
        return await super().ask({"x-inferplane-class": cls}, stream=stream)


def slo(outcome: str) -> str:
    return (
        f'inferplane_slo_requests_total{{gen_ai_request_model="m",outcome="{outcome}",'
        'slo_class="realtime"}'
    )


def content(reply: httpx.Response) -> str:
    if not reply.headers["content-type"].startswith("text/event-stream"):
        return str(reply.json()["choices"][0]["message"]["content"])
    text = ""
    for line in reply.text.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text


@pytest.mark.parametrize("stream", [True, False])
async def test_a_slow_first_attempt_is_hedged_the_hedge_wins_and_the_loser_is_closed(
    tmp_path: Path, stream: bool
) -> None:
    upstream = FakeUpstream({"slow": 30.0, "fast": 0.0})
    async with Harness(config_text(tmp_path), upstream) as h:
        h.warm(0.01, stream=stream)
        reply = await h.ask(stream=stream)  # round robin: the first goes to "slow"
        assert reply.status_code == 200 and content(reply) == "a b"
        assert [host for host, _ in upstream.sent] == ["slow", "fast"]
        await asyncio.sleep(0)  # the loser's cancellation runs
        assert upstream.sent[0][1].closed and not upstream.sent[1][1].closed
        [row] = h.rows.rows
        assert (row.backend, row.retries, row.status, row.output_tokens) == ("fast:2", 1, 200, 2)
        assert await h.metric("inferplane_hedges_total") == 1
        assert await h.metric("inferplane_hedges_won_total") == 1
        assert await h.metric(slo("met")) == 1


async def test_no_hedge_when_the_first_answers_in_time_or_the_class_does_not_hedge(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream({"slow": 0.3, "fast": 0.0})
    async with Harness(config_text(tmp_path), upstream) as h:
        h.warm(1.0)  # p95 of 1 s: 0.3 s is in time
        assert (await h.ask()).status_code == 200
        assert (await h.ask("batch")).status_code == 200
        assert await h.metric("inferplane_hedges_total") == 0
        assert [r.retries for r in h.rows.rows] == [0, 0]
    # Until enough first bytes are observed there are no grounds to hedge either.
    upstream = FakeUpstream({"slow": 0.3, "fast": 0.0})
    async with Harness(config_text(tmp_path), upstream) as h:
        assert (await h.ask()).status_code == 200
        assert await h.metric("inferplane_hedges_total") == 0


async def test_a_spent_retry_budget_means_no_hedge(tmp_path: Path) -> None:
    upstream = FakeUpstream({"slow": 0.3, "fast": 0.0})
    text = config_text(tmp_path, gateway="retry_budget_ratio: 0, retry_budget_min: 0")
    async with Harness(text, upstream) as h:
        h.warm(0.01)
        reply = await h.ask()
        assert reply.status_code == 200
        assert [host for host, _ in upstream.sent] == ["slow"]
        assert h.rows.rows[0].retries == 0


async def test_the_first_answer_wins_when_the_hedge_is_slower(tmp_path: Path) -> None:
    upstream = FakeUpstream({"slow": 0.2, "fast": 30.0})  # "slow" is the quicker here
    async with Harness(config_text(tmp_path), upstream) as h:
        h.warm(0.01)
        assert (await h.ask()).status_code == 200
        await asyncio.sleep(0)
        assert [host for host, _ in upstream.sent] == ["slow", "fast"]
        assert upstream.sent[1][1].closed  # the hedge lost and was dropped
        assert h.rows.rows[0].backend == "slow:1" and h.rows.rows[0].retries == 1
        assert await h.metric("inferplane_hedges_won_total") == 0


async def test_a_queued_model_hedges_into_a_free_slot_and_gives_the_other_back(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream({"slow": 30.0, "fast": 0.0})
    text = config_text(tmp_path, backend="max_concurrency: 1, max_tokens_in_flight: 100000")
    async with Harness(text, upstream) as h:
        h.warm(0.01)
        reply = await h.ask()
        assert reply.status_code == 200 and h.rows.rows[0].backend == "fast:2"
        dispatcher = h.gateway.queues[MODEL].dispatcher
        assert dispatcher.in_flight == [0, 0] and dispatcher.tokens_in_flight == [0, 0]
        # Both slots busy: a hedge must not take one; the request waits for its own.
        upstream.delays = {"slow": 0.4, "fast": 0.4}
        replies = await asyncio.gather(h.ask(), h.ask())
        assert [r.status_code for r in replies] == [200, 200]
        assert [r.retries for r in h.rows.rows[1:]] == [0, 0]
        assert dispatcher.in_flight == [0, 0] and dispatcher.tokens_in_flight == [0, 0]


async def test_a_late_first_token_counts_as_a_missed_target(tmp_path: Path) -> None:
    upstream = FakeUpstream({"slow": 0.6, "fast": 0.6})
    async with Harness(config_text(tmp_path, hedge=False), upstream) as h:
        assert (await h.ask()).status_code == 200  # 0.6 s > 0.5 s
        assert (await h.ask("batch")).status_code == 200  # no target: not counted
        assert await h.metric(slo("missed")) == 1
        assert await h.metric("inferplane_slo_requests_total") == 1


async def test_a_first_attempt_failing_after_the_hedge_left_loses_to_the_hedge(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream({"slow": 0.2, "fast": 0.3}, failing=frozenset({"slow"}))
    async with Harness(config_text(tmp_path), upstream) as h:
        h.warm(0.01)
        reply = await h.ask()
        assert reply.status_code == 200 and content(reply) == "a b"
        assert (h.rows.rows[0].backend, h.rows.rows[0].retries) == ("fast:2", 1)


async def test_when_both_attempts_fail_the_request_fails_as_a_retried_one_would(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream({"slow": 0.2, "fast": 0.1}, failing=frozenset({"slow", "fast"}))
    async with Harness(config_text(tmp_path), upstream) as h:
        h.warm(0.01)
        reply = await h.ask()
        assert reply.status_code == 502 and reply.json()["error"]["code"] == "upstream_error"
        assert [host for host, _ in upstream.sent] == ["slow", "fast"]  # nothing left to try
        assert h.rows.rows[0].retries == 1
