"""vLLM's Prometheus metrics, same names, labels and buckets, for the emulated engine.

Names and buckets follow ``vllm/v1/metrics/loggers.py``; latencies are in engine
seconds (the modelled GPU's time, i.e. wall time x time scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from inferplane.engines._core import EngineCore

__all__ = ["EngineMetrics"]

# fmt: off
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0, 20.0, 40.0, 80.0)
_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# fmt: on


class _SchedulerState(Collector):
    """Gauges and counters read from the core at scrape time, so they are never stale."""

    def __init__(self, core: EngineCore, model_name: str) -> None:
        self._core = core
        self._labels = [model_name]

    def collect(self) -> Iterator[Metric]:
        for name, doc, value in (
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                self._core.num_running,
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                self._core.num_waiting,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                self._core.kv_usage,
            ),
        ):
            family = GaugeMetricFamily(name, doc, labels=["model_name"])
            family.add_metric(self._labels, float(value))
            yield family
        # vLLM v1 counts both in tokens, over new requests (not readmissions).
        for name, doc, value in (
            (
                "vllm:prefix_cache_queries",
                "Prefix cache queries, in terms of number of queried tokens.",
                self._core.num_prefix_queries,
            ),
            (
                "vllm:prefix_cache_hits",
                "Prefix cache hits, in terms of number of cached tokens.",
                self._core.num_prefix_hits,
            ),
        ):
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric(self._labels, float(value))
            yield counter


class EngineMetrics:
    """Per-replica registry; one per app so several replicas can live in one process."""

    def __init__(self, core: EngineCore, model_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_SchedulerState(core, model_name))
        self._model_name = model_name

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
            metric = Histogram(name, doc, ["model_name"], buckets=buckets, registry=self.registry)
            return metric.labels(model_name)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, ["model_name"], registry=self.registry).labels(model_name)

        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token.", _TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Inter-token latency.", _ITL_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Time spent waiting before first scheduled.",
            _E2E_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds", "End-to-end request latency.", _E2E_BUCKETS
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self._success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["model_name", "finished_reason"],
            registry=self.registry,
        )

    def success(self, finished_reason: str) -> None:
        self._success.labels(self._model_name, finished_reason).inc()
