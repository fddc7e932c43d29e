"""Reading an engine's load from its metrics, as vLLM names them."""

from __future__ import annotations

from inferplane.gateway._probe import engine_load
from inferplane.policy import EngineLoad

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
