"""Reading an engine's load from its metrics, as vLLM names them."""

from __future__ import annotations

import asyncio

from inferplane.gateway._probe import Target, check_forever, engine_load
from inferplane.policy import EngineLoad, Health

VLLM = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 7.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
"""


def test_vllm_metrics_give_running_waiting_and_kv_usage() -> None:
    assert engine_load(VLLM) == EngineLoad(running=7, waiting=2, kv_usage=0.42)


def test_a_server_without_vllm_metrics_reports_nothing() -> None:
    assert engine_load("# TYPE up gauge\nup 1.0\n") is None


async def test_a_backend_whose_metrics_are_not_prometheus_stops_no_other_check() -> None:
    # One server answers /metrics with a web page; the checks of the other go on learning.
    async def serve(metrics: bytes) -> asyncio.Server:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            path = (await reader.readuntil(b"\r\n\r\n")).split(b" ")[1]
            body = b"" if path == b"/health" else metrics
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        return await asyncio.start_server(answer, "127.0.0.1", 0)

    servers = [await serve(b"<html>metrics</html>"), await serve(VLLM.encode())]
    health = Health(2)
    learned: list[EngineLoad] = []
    targets = [
        Target(health, i, f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}", learned.append)
        for i, s in enumerate(servers)
    ]
    checks = asyncio.create_task(check_forever(targets, 0.01, 5.0))
    for _ in range(1000):  # until three rounds have learned from the good one
        if len(learned) >= 3 or checks.done():
            break
        await asyncio.sleep(0.01)
    assert not checks.done()
    checks.cancel()
    for server in servers:
        server.close()
    assert learned[:3] == [EngineLoad(running=7, waiting=2, kv_usage=0.42)] * 3
