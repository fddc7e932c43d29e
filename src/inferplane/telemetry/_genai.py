"""The gateway's metrics, named after the OpenTelemetry GenAI semantic conventions.

Prometheus form of the OTel names (dots become underscores): histograms
``gen_ai_client_token_usage`` (by ``gen_ai_token_type``),
``gen_ai_server_time_to_first_token``, ``gen_ai_server_time_per_output_token``,
``gen_ai_server_request_duration`` (seconds; buckets are the conventions'
advisory ones), plus ``inferplane_requests_in_flight``,
``inferplane_errors_total`` by ``error_type``, ``inferplane_queue_depth`` by
``slo_class``, ``inferplane_slo_requests_total`` by ``slo_class`` and
``outcome`` (met or missed its TTFT target), ``inferplane_hedges_total`` and
``inferplane_hedges_won_total``, and ``inferplane_backend_capacity`` by
``backend`` and ``unit`` (requests or tokens the gateway sends it at once).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from inferplane.telemetry._labels import BoundedLabel

__all__ = ["GatewayMetrics"]

# fmt: off
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
    5.0, 7.5, 10.0)
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
    40.96, 81.92)
# fmt: on

MODEL = "gen_ai_request_model"
OPERATION = "gen_ai_operation_name"
TENANT = "tenant"


class GatewayMetrics:
    """One registry per gateway app; model and tenant labels are bounded."""

    def __init__(
        self, models: tuple[str, ...], tenants: tuple[str, ...], max_tenants: int = 50
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.model = BoundedLabel(len(models), models)
        self.tenant = BoundedLabel(max_tenants, tenants)
        base = [MODEL, OPERATION, TENANT]
        self._tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per request.",
            [*base, "gen_ai_token_type"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self._ttft = Histogram(
            "gen_ai_server_time_to_first_token",
            "Seconds from request to the first output token.",
            base,
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self._tpot = Histogram(
            "gen_ai_server_time_per_output_token",
            "Seconds per output token after the first.",
            base,
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self._duration = Histogram(
            "gen_ai_server_request_duration",
            "Seconds from request to the end of the response.",
            [*base, "error_type"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self._in_flight = Gauge(
            "inferplane_requests_in_flight", "Requests being proxied now.", [MODEL], registry=r
        )
        self._queued = Gauge(
            "inferplane_queue_depth",
            "Requests waiting in the gateway's queue for a replica slot.",
            [MODEL, "slo_class"],
            registry=r,
        )
        self._errors = Counter(
            "inferplane_errors",
            "Requests that ended in an error.",
            [MODEL, "error_type"],
            registry=r,
        )
        self._slo = Counter(
            "inferplane_slo_requests",
            "Requests of SLO classes with a TTFT target, by whether they met it.",
            [MODEL, "slo_class", "outcome"],
            registry=r,
        )
        self._hedges = Counter(
            "inferplane_hedges",
            "Second attempts sent because the first had no first byte in time.",
            [MODEL],
            registry=r,
        )
        self._hedges_won = Counter(
            "inferplane_hedges_won",
            "Second attempts that answered first (the first attempt was cancelled).",
            [MODEL],
            registry=r,
        )
        self._capacity = Gauge(
            "inferplane_backend_capacity",
            "Requests or tokens the gateway sends a backend at once (+Inf: no limit).",
            [MODEL, "backend", "unit"],
            registry=r,
        )

    def labels(self, model: str, operation: str, tenant: str) -> tuple[str, str, str]:
        return (self.model(model), operation, self.tenant(tenant))

    def refused(self, error_type: str) -> None:
        """A request turned away at the door (auth, validation, budget), before any model."""
        self._errors.labels("", error_type).inc()

    def watch_queue(self, model: str, slo_class: str, depth: Callable[[], int]) -> None:
        """Report a queue's depth at every scrape."""
        self._queued.labels(self.model(model), slo_class).set_function(depth)

    def watch_capacity(
        self, model: str, backend: str, unit: str, capacity: Callable[[], float]
    ) -> None:
        """Report a backend's capacity in ``unit`` (requests, tokens) at every scrape."""
        self._capacity.labels(self.model(model), backend, unit).set_function(capacity)

    def slo(self, model: str, slo_class: str, met: bool) -> None:
        """A request of a class with a TTFT target met it, or missed it."""
        self._slo.labels(self.model(model), slo_class, "met" if met else "missed").inc()

    def hedged(self, model: str) -> None:
        self._hedges.labels(self.model(model)).inc()

    def hedge_won(self, model: str) -> None:
        self._hedges_won.labels(self.model(model)).inc()

    def started(self, model: str) -> None:
        self._in_flight.labels(self.model(model)).inc()

    def finished(
        self,
        labels: tuple[str, str, str],
        duration_s: float,
        *,
        ttft_s: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        error_type: str | None = None,
    ) -> None:
        """Account one request that ended, whatever the outcome."""
        self._in_flight.labels(labels[0]).dec()
        self._duration.labels(*labels, error_type or "").observe(duration_s)
        if error_type is not None:
            self._errors.labels(labels[0], error_type).inc()
        if input_tokens is not None:
            self._tokens.labels(*labels, "input").observe(input_tokens)
        if output_tokens is not None:
            self._tokens.labels(*labels, "output").observe(output_tokens)
        if ttft_s is not None:
            self._ttft.labels(*labels).observe(ttft_s)
            if output_tokens is not None and output_tokens > 1:
                self._tpot.labels(*labels).observe((duration_s - ttft_s) / (output_tokens - 1))
