"""The configuration schema: one YAML file, every key validated, unknown keys refused."""

from __future__ import annotations

import functools
import math
import re
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from inferplane.policy import BudgetLimits, ClassPolicy, RoutingMode, Window

__all__ = [
    "ApiKey",
    "Backend",
    "Config",
    "EngineKind",
    "GatewaySettings",
    "Model",
    "PricingMode",
    "RunId",
    "SloClass",
    "Strict",
    "Tenant",
    "TenantName",
]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
Name = Annotated[str, Field(pattern=_NAME)]
# Workflow and run ids: what the X-Inferplane-Workflow and -Run headers accept.
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
RunId = Annotated[str, Field(pattern=RUN_ID)]
# Tenant and key names are parts of budget scopes ("tenant/key"): no "/" in them, or
# tenant "a/b" would be read as tenant "a" (and its budgets never found).
TenantName = Annotated[str, Field(pattern=RUN_ID)]
# Budget limits fit the ledger's 64-bit integers with room to add up.
_MAX_LIMIT = 10**15


class Strict(BaseModel):
    """Every config-like model: unknown keys are refused, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineKind(StrEnum):
    """What answers at a backend URL. ``emulated`` replicas are started by ``inferplane up``."""

    EMULATED = "emulated"
    VLLM = "vllm"
    SGLANG = "sglang"
    TGI = "tgi"
    LLAMACPP = "llamacpp"
    OPENAI = "openai"  # any OpenAI-compatible URL


class GatewaySettings(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    connect_timeout_s: float = Field(2.0, gt=0)
    # Waiting for response headers and between two chunks of a stream.
    read_timeout_s: float = Field(300.0, gt=0)
    # Outlier ejection: a backend that refused a connection, or failed this many
    # requests in a row, is skipped for backend_cooldown_s x the ejections in a row (up
    # to max_ejection_s); then one probe request decides whether it is back.
    backend_cooldown_s: float = Field(5.0, ge=0)
    outlier_consecutive_errors: int = Field(5, ge=1)
    max_ejection_s: float = Field(300.0, ge=0)
    # Retries (to another backend, before anything reached the client) in flight: at
    # most this share of the model's requests in flight, but always retry_budget_min.
    retry_budget_ratio: float = Field(0.2, ge=0, le=1)
    retry_budget_min: int = Field(3, ge=0)
    # Active health checks: GET /health on every backend this often (0: off).
    health_check_interval_s: float = Field(5.0, ge=0)
    max_connections_per_backend: int = Field(1024, ge=1)
    # Budget leases of a process that stopped heart-beating return to the pool after this.
    lease_ttl_s: float = Field(30.0, ge=1, le=3600)
    # Hedging (SLO classes with hedge: true): a second attempt after the model's observed
    # p95 time to a first byte, kept within these bounds, once this many are observed.
    hedge_min_delay_s: float = Field(0.02, ge=0, le=600)
    hedge_max_delay_s: float = Field(2.0, gt=0, le=600)
    hedge_min_samples: int = Field(20, ge=1, le=256)

    @model_validator(mode="after")
    def _hedge_bounds(self) -> GatewaySettings:
        if self.hedge_min_delay_s > self.hedge_max_delay_s:
            raise ValueError(
                f"hedge_min_delay_s ({self.hedge_min_delay_s:g}) is above hedge_max_delay_s "
                f"({self.hedge_max_delay_s:g})"
            )
        return self


class Backend(Strict):
    url: str
    engine: EngineKind = EngineKind.OPENAI
    name: Name | None = None  # defaults to host:port
    model: str | None = None  # the name the backend serves; defaults to the logical name
    gpu: str | None = None  # catalogue name; required for emulated backends
    tp: int = Field(1, ge=1, le=64)
    price_per_hour: float | None = Field(None, ge=0)
    # Sustained throughput (output + weighted input tokens per busy second), as measured
    # by a load test: the starting point of per_hour pricing's own measurement.
    throughput_tokens_per_s: float | None = Field(None, gt=0)
    api_key_env: str | None = None  # environment variable holding the backend's key
    time_scale: float = Field(1.0, gt=0)  # emulated only: engine seconds per wall second
    # Requests the gateway sends it at once; more wait in the gateway's queue, where
    # priority and fairness apply. "auto": learned from its /metrics (vLLM names),
    # starting at 16. None: no limit, no queue.
    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] | Literal["auto"] | None = None
    # Tokens (prompt + max output of each request) the gateway sends it at once; more
    # wait in the gateway's queue (a request larger than this still runs alone).
    # "auto": learned from its /metrics (KV cache usage against the gateway's tokens in
    # flight there), no limit until measured. None: no token limit.
    max_tokens_in_flight: Annotated[int, Field(ge=1, le=1 << 40)] | Literal["auto"] | None = None
    # Share of new traffic relative to the others (a canary at 0.05; 0 takes none).
    weight: float = Field(1.0, ge=0, le=1000)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL with a host, got {url!r}")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return url.rstrip("/")

    @field_validator("max_concurrency", "max_tokens_in_flight", mode="before")
    @classmethod
    def _limit_or_auto(cls, value: object, info: ValidationInfo) -> object:
        """One clear message instead of one per member of the union."""
        if value is None or value == "auto":
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        unit = "requests" if info.field_name == "max_concurrency" else "tokens"
        raise ValueError(f"must be a whole number of {unit} >= 1, or 'auto', got {value!r}")

    @model_validator(mode="after")
    def _emulated_needs_gpu(self) -> Backend:
        if self.engine is EngineKind.EMULATED and self.gpu is None:
            raise ValueError("an emulated backend needs 'gpu' (e.g. H100)")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


class Pricing(Strict):
    """USD per million tokens, API-style. 1 USD per 1M tokens is 1 micro-dollar per token."""

    input_per_1m: Decimal = Field(Decimal(0), ge=0)
    output_per_1m: Decimal = Field(Decimal(0), ge=0)
    # Prompt tokens the server found in its prefix cache; the input price when unset.
    cached_input_per_1m: Decimal | None = Field(None, ge=0)

    def cost_micros(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> int:
        """Exact cost in micro-dollars, rounded up to a whole micro-dollar per request.
        ``cached_tokens`` are the part of ``input_tokens`` served from the prefix cache."""
        cached = min(cached_tokens, input_tokens)
        cached_price = (
            self.input_per_1m if self.cached_input_per_1m is None else self.cached_input_per_1m
        )
        uncached, cached_, output, denominator = _integer_prices(
            self.input_per_1m, cached_price, self.output_per_1m
        )
        cost = uncached * (input_tokens - cached) + cached_ * cached + output * output_tokens
        return -(-cost // denominator)


@functools.lru_cache(maxsize=1024)
def _integer_prices(*prices: Decimal) -> tuple[int, ...]:
    """Prices as numerators over one common denominator (last): exact integer arithmetic,
    several times faster than Decimal's, for a sum done more than once per request."""
    ratios = [p.as_integer_ratio() for p in prices]
    denominator = math.lcm(*(d for _, d in ratios))
    return (*(n * (denominator // d) for n, d in ratios), denominator)


class PricingMode(StrEnum):
    PER_TOKEN = "per_token"  # API-style prices per 1M tokens (``price``)
    PER_HOUR = "per_hour"  # self-hosted: each backend's price_per_hour, by measured throughput


class Model(Strict):
    backends: list[Backend] = Field(min_length=1)
    # Catalogue model the backends run (for the perf model); defaults to the logical name.
    catalogue: str | None = None
    # round_robin | least_loaded | prefix_affinity | session_affinity (X-Inferplane-Session)
    routing: RoutingMode = RoutingMode.ROUND_ROBIN
    pricing: PricingMode = PricingMode.PER_TOKEN
    price: Pricing = Pricing()
    # per_hour: what a prompt token costs relative to a generated one.
    input_token_weight: Decimal = Field(Decimal("0.25"), ge=0, le=10)
    # What a request without max_tokens is assumed to generate at most, for budgets.
    max_output_tokens: int = Field(4096, ge=1)
    # Models to try in turn when this one cannot serve a request: no backend available,
    # every backend answered an error, or its SLO class cannot be served in time.
    fallback: list[Name] = Field(default_factory=list)

    @model_validator(mode="after")
    def _hourly_prices(self) -> Model:
        if self.pricing is PricingMode.PER_HOUR:
            missing = [b.label for b in self.backends if b.price_per_hour is None]
            if missing:
                raise ValueError(f"pricing per_hour needs price_per_hour on backends {missing}")
            if self.price != Pricing():
                raise ValueError("pricing per_hour derives prices: remove 'price'")
        return self


class Budget(Strict):
    """Limits of one scope; omitted dimensions are unlimited."""

    input_tokens: int | None = Field(None, ge=0, le=_MAX_LIMIT)
    output_tokens: int | None = Field(None, ge=0, le=_MAX_LIMIT)
    total_tokens: int | None = Field(None, ge=0, le=_MAX_LIMIT)
    calls: int | None = Field(None, ge=0, le=_MAX_LIMIT)
    # Attempts on another backend after one failed (failover), when budgeted.
    retries: int | None = Field(None, ge=0, le=_MAX_LIMIT)
    cost_usd: Decimal | None = Field(None, ge=0, le=Decimal(10) ** 9)
    # Runs only: how long a run may last from its first request (an agent loop's deadline).
    wall_time_s: float | None = Field(None, gt=0, le=10**9)
    window: Window = Window.LIFETIME

    def limits(self) -> BudgetLimits:
        return BudgetLimits(
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.total_tokens,
            calls=self.calls,
            retries=self.retries,
            cost_micros=None if self.cost_usd is None else math.floor(self.cost_usd * 10**6),
        )


class SloClass(Strict):
    """A class of traffic: its queue priority (0 first), how long its requests may wait
    in the gateway's queue before they are refused (429 slo_unattainable), its share
    against classes of equal priority, its time-to-first-token target (None: best
    effort), and whether its requests are hedged."""

    priority: int = Field(ge=0, le=100)
    max_queue_s: float = Field(gt=0, le=86_400)
    weight: float = Field(1.0, gt=0, le=1000)
    ttft_s: float | None = Field(None, gt=0, le=86_400)
    hedge: bool = False

    def policy(self, name: str) -> ClassPolicy:
        """What the dispatcher needs of the class (the gateway's and the twin's)."""
        return ClassPolicy(name, self.priority, self.max_queue_s, self.weight, self.ttft_s)


DEFAULT_SLO_CLASSES = {
    "realtime": SloClass(priority=0, max_queue_s=0.5, ttft_s=0.5),
    "interactive": SloClass(priority=1, max_queue_s=2.0, ttft_s=2.0),
    "batch": SloClass(priority=2, max_queue_s=600.0),
}


class ApiKey(Strict):
    name: TenantName
    sha256: str
    budget: Budget | None = None
    disabled: bool = False
    # Charged when a request names none in its headers (a bot's key, say).
    workflow: RunId | None = None
    run: RunId | None = None
    slo_class: Name | None = None

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("must be the 64 lowercase hex digits of a SHA-256 digest")
        return value


class Tenant(Strict):
    disabled: bool = False
    # Its share of a class's capacity against other tenants when they compete.
    weight: float = Field(1.0, gt=0, le=1000)
    keys: list[ApiKey] = Field(default_factory=list)
    # Logical models this tenant may call; None allows all.
    models: list[Name] | None = None
    budget: Budget | None = None
    # Applied to each workflow and each run of this tenant (from request headers).
    workflow_budget: Budget | None = None
    run_budget: Budget | None = None

    @model_validator(mode="after")
    def _wall_time_for_runs(self) -> Tenant:
        budgets = {"budget": self.budget, "workflow_budget": self.workflow_budget}
        budgets.update({f"keys.{k.name}.budget": k.budget for k in self.keys})
        for where, budget in budgets.items():
            if budget is not None and budget.wall_time_s is not None:
                raise ValueError(f"{where}: wall_time_s applies to runs only (run_budget)")
        return self


class Config(Strict):
    gateway: GatewaySettings = GatewaySettings()
    data_dir: Path = Path(".inferplane")
    # Where the ledger, tenants and budgets live: SQLite under data_dir when unset; a
    # postgresql:// URL for several gateway processes on several hosts. libpq's
    # environment (PGPASSWORD, PGSSLMODE...) applies.
    database_url: str | None = None
    # Off: no usage records, no budgets, no admin-created tenants (a stateless proxy).
    usage_ledger: bool = True
    admin_key_sha256: str | None = None
    slo_classes: dict[Name, SloClass] = Field(default_factory=lambda: dict(DEFAULT_SLO_CLASSES))
    default_slo_class: Name = "interactive"
    # A queued request gains one priority level per this many seconds waited.
    queue_aging_s: float = Field(10.0, gt=0)
    models: dict[Name, Model] = Field(min_length=1)
    tenants: dict[TenantName, Tenant] = Field(default_factory=dict)

    @field_validator("admin_key_sha256")
    @classmethod
    def _admin_digest(cls, value: str | None) -> str | None:
        return None if value is None else ApiKey._hex_digest(value)

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, url: str | None) -> str | None:
        if url is not None and urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ValueError(f"must be a postgresql:// URL, got scheme {urlsplit(url).scheme!r}")
        return url

    @model_validator(mode="after")
    def _unique(self) -> Config:
        seen: dict[str, str] = {}
        for tenant_name, tenant in self.tenants.items():
            for key in tenant.keys:
                if key.sha256 in seen:
                    raise ValueError(
                        f"API key {key.name!r} of tenant {tenant_name!r} is also "
                        f"{seen[key.sha256]!r}: every key must be distinct"
                    )
                seen[key.sha256] = f"{key.name} ({tenant_name})"
        for tenant_name, tenant in self.tenants.items():
            unknown = sorted(set(tenant.models or ()) - set(self.models))
            if unknown:
                raise ValueError(f"tenant {tenant_name!r} allows unknown models {unknown}")
        if self.default_slo_class not in self.slo_classes:
            raise ValueError(
                f"default_slo_class {self.default_slo_class!r} is not among slo_classes "
                f"{sorted(self.slo_classes)}"
            )
        for tenant_name, tenant in self.tenants.items():
            for key in tenant.keys:
                if key.slo_class is not None and key.slo_class not in self.slo_classes:
                    raise ValueError(
                        f"key {key.name!r} of tenant {tenant_name!r} names unknown SLO class "
                        f"{key.slo_class!r}"
                    )
        if not self.usage_ledger:
            budgeted = [
                name
                for name, t in self.tenants.items()
                if any((t.budget, t.workflow_budget, t.run_budget, *(k.budget for k in t.keys)))
            ]
            if budgeted:
                raise ValueError(
                    f"tenant {budgeted[0]!r} has budgets, which need the usage ledger: "
                    "remove usage_ledger: false"
                )
        for name, model in self.models.items():
            unknown_fallbacks = [f for f in model.fallback if f not in self.models or f == name]
            if unknown_fallbacks:
                raise ValueError(
                    f"model {name!r} falls back to {unknown_fallbacks}, which are not other models"
                )
            labels = [b.label for b in model.backends]
            if len(set(labels)) != len(labels):
                raise ValueError(f"model {name!r} lists the same backend twice")
        return self
