"""A twin scenario: the fleet, the gateway's policies, the workload; one YAML file.

The policy sections are the gateway's own (``slo_classes``, ``default_slo_class``,
``queue_aging_s``, tenant weights, per-model ``routing`` and ``fallback``, the
``gateway`` breaker settings), so a policy tried in the twin is the one the
gateway is configured with. Backends become replica groups described by their
hardware instead of a URL.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from inferplane.config import (
    Backend,
    Config,
    ConfigError,
    GatewaySettings,
    SloClass,
    Strict,
    load_config,
    load_yaml,
)
from inferplane.config._schema import DEFAULT_SLO_CLASSES, Name
from inferplane.engines import EngineLimits
from inferplane.perf import PerfModel, get_gpu, get_model, get_storage
from inferplane.policy import RoutingMode
from inferplane.policy._autoscale import AutoscaleConfig
from inferplane.policy._failures import FailureModel
from inferplane.twin._workload import WorkloadSpec

__all__ = [
    "MAX_TIMESERIES_ROWS",
    "AutoscaleSpec",
    "FailureSpec",
    "OutputSpec",
    "ReplicaGroup",
    "Scenario",
    "SimModel",
    "SimTenant",
    "load_scenario",
]


# The time series is kept in memory (about 1 KB a row per model) until the run ends: a
# run sampled more often than this is refused before it starts rather than left to grow.
MAX_TIMESERIES_ROWS = 1_000_000


def timeseries_rows_error(span_s: float, interval_s: float, what: str) -> str | None:
    """Why sampling ``span_s`` seconds every ``interval_s`` is refused; None if it is not."""
    rows = span_s / interval_s
    if rows <= MAX_TIMESERIES_ROWS:
        return None
    return (
        f"{what} sampled every output.timeseries_interval_s {interval_s:g} s gives "
        f"{rows:,.0f} time-series rows, more than {MAX_TIMESERIES_ROWS:,}: set "
        f"timeseries_interval_s to at least {span_s / MAX_TIMESERIES_ROWS:g} s"
    )


class ReplicaGroup(Strict):
    """``count`` identical replicas: one engine on ``tp`` GPUs each."""

    gpu: str
    tp: int = Field(1, ge=1, le=64)
    count: int = Field(1, ge=1, le=100_000)
    # Engine limits (vLLM's flags of the same names).
    max_num_seqs: int = Field(256, ge=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    enable_chunked_prefill: bool = True
    kv_capacity_tokens: int | None = Field(None, ge=1)  # None: from the performance model
    # The gateway's limits per replica, as a backend's (None: none; neither: no queue).
    max_concurrency: int | None = Field(None, ge=1)
    max_tokens_in_flight: int | None = Field(None, ge=1)  # as a backend's, in tokens
    weight: float = Field(1.0, ge=0, le=1000)
    # USD per replica-hour; None: tp x the catalogue's on-demand GPU price.
    price_per_hour: float | None = Field(None, ge=0)

    def limits(self) -> EngineLimits:
        return EngineLimits(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            enable_chunked_prefill=self.enable_chunked_prefill,
            kv_capacity_tokens=self.kv_capacity_tokens,
        )

    def hourly_price(self) -> float:
        if self.price_per_hour is not None:
            return self.price_per_hour
        return self.tp * get_gpu(self.gpu).price_per_hour


class AutoscaleSpec(Strict):
    """``policy.AutoscaleConfig``'s knobs, and where a new replica loads its weights from."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(8, ge=1, le=100_000)
    target_in_flight_per_replica: float = Field(32.0, gt=0)
    tolerance: float = Field(0.1, ge=0)
    ttft_p95_target_s: float | None = Field(None, gt=0)
    ttft_p99_target_s: float | None = Field(None, gt=0)
    ttft_cooldown_s: float = Field(60.0, ge=0)
    target_busy_fraction: float | None = Field(None, gt=0, le=1)
    scale_up_window_s: float = Field(0.0, ge=0)
    scale_down_window_s: float = Field(300.0, ge=0)
    max_step_up: int = Field(4, ge=1)
    max_step_down: int | None = Field(None, ge=1)
    evaluation_interval_s: float = Field(15.0, gt=0)
    # A storage preset of ``perf.STORAGES`` (the cold start follows from the weights'
    # bytes), or a fixed cold start in seconds.
    storage: str = "local-nvme"
    cold_start_s: float | None = Field(None, ge=0)

    def config(self) -> AutoscaleConfig:
        fields = self.model_dump(exclude={"storage", "cold_start_s"})
        return AutoscaleConfig(**fields)


class FailureSpec(Strict):
    """Replicas fail independently: exponential up-times, then a repair."""

    # Mean up-time of one replica; None: the catalogue's GPU MTBF over the replica's GPUs.
    mtbf_s: float | None = Field(None, gt=0)
    mean_repair_s: float = Field(gt=0)  # detection + replacement + cold start
    repair: Literal["exponential", "fixed"] = "exponential"

    def model(self, num_gpus: int) -> FailureModel:
        if self.mtbf_s is None:
            base = FailureModel.for_gpus(num_gpus, self.mean_repair_s)
            return FailureModel(base.mtbf_s, self.mean_repair_s, self.repair)
        return FailureModel(self.mtbf_s, self.mean_repair_s, self.repair)


class SimModel(Strict):
    """A logical model: what its replicas run and how the gateway spreads work."""

    replicas: list[ReplicaGroup] = Field(min_length=1)
    # Scale the pool (one replica group, starting at its ``count``) on load and latency.
    autoscale: AutoscaleSpec | None = None
    failures: FailureSpec | None = None
    catalogue: str | None = None  # the catalogue model; defaults to the logical name
    routing: RoutingMode = RoutingMode.ROUND_ROBIN
    fallback: list[Name] = Field(default_factory=list)
    # Cost split between requests: what a prompt token weighs against a generated one
    # (the gateway's ``per_hour`` pricing rule).
    input_token_weight: Decimal = Field(Decimal("0.25"), ge=0, le=10)

    @model_validator(mode="after")
    def _one_group_to_scale(self) -> SimModel:
        if self.autoscale is not None:
            if len(self.replicas) != 1:
                raise ValueError("autoscale scales one replica group: list exactly one")
            a = self.autoscale
            try:
                a.config()
                if a.cold_start_s is None:
                    get_storage(a.storage)
            except ValueError as exc:
                raise ValueError(f"autoscale: {exc}") from None
            group = self.replicas[0]
            if (
                a.min_replicas == 0
                and group.max_concurrency is None
                and group.max_tokens_in_flight is None
            ):
                # With no queue a request that finds no replica is refused at once (as the
                # live gateway answers it) and is never seen as demand: a pool at zero
                # would stay there for the rest of the run.
                raise ValueError(
                    "autoscale: min_replicas 0 needs a queue to scale back from zero: set "
                    "max_concurrency or max_tokens_in_flight on the replica group (requests "
                    "then wait for a cold start, up to their class's max_queue_s), or "
                    "min_replicas >= 1"
                )
            count = group.count
            if not a.min_replicas <= count <= a.max_replicas:
                raise ValueError(
                    f"autoscale: the group starts with count {count}, outside "
                    f"[min_replicas {a.min_replicas}, max_replicas {a.max_replicas}]"
                )
        return self

    def pool(self) -> list[tuple[ReplicaGroup, bool]]:
        """Every replica the model may have, with whether it is up at the start: the
        groups' replicas, or an autoscaled group's ``max_replicas``."""
        if self.autoscale is None:
            return [(g, True) for g in self.replicas for _ in range(g.count)]
        group = self.replicas[0]
        return [(group, i < group.count) for i in range(self.autoscale.max_replicas)]


class SimTenant(Strict):
    weight: float = Field(1.0, gt=0, le=1000)


class OutputSpec(Strict):
    requests: bool = True  # one CSV row per request; off keeps memory flat
    timeseries_interval_s: float = Field(10.0, gt=0)


class Scenario(Strict):
    seed: int = 0
    # A gateway config file (relative to the scenario) whose policy sections the twin
    # uses where the scenario gives none: SLO classes, aging, tenant weights, gateway
    # settings, and each model's routing and fallback (backends' max_concurrency and
    # max_tokens_in_flight too, when they are numbers and the counts match).
    policies_from: Path | None = None
    models: dict[Name, SimModel] = Field(min_length=1)
    slo_classes: dict[Name, SloClass] = Field(default_factory=lambda: dict(DEFAULT_SLO_CLASSES))
    default_slo_class: Name = "interactive"
    queue_aging_s: float = Field(10.0, gt=0)
    tenants: dict[Name, SimTenant] = Field(default_factory=dict)
    gateway: GatewaySettings = GatewaySettings()
    workload: WorkloadSpec
    output: OutputSpec = OutputSpec()

    @model_validator(mode="before")
    @classmethod
    def _policies_from(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("policies_from") is None:
            return data
        path = Path(str(data["policies_from"]))
        base = (info.context or {}).get("base_dir")
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        try:
            config = load_config(path)
        except ConfigError as exc:
            raise ValueError(f"policies_from: {exc}") from None
        return _with_policies(data, config)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.default_slo_class not in self.slo_classes:
            raise ValueError(
                f"default_slo_class {self.default_slo_class!r} is not among slo_classes "
                f"{sorted(self.slo_classes)}"
            )
        for name, model in self.models.items():
            unknown = [f for f in model.fallback if f not in self.models or f == name]
            if unknown:
                raise ValueError(f"model {name!r} falls back to {unknown}, not other models")
            if len(set(model.fallback)) != len(model.fallback):
                # The chain is walked by position: a repeated model would loop for ever.
                raise ValueError(f"model {name!r} lists a fallback twice: {model.fallback}")
            for i, group in enumerate(model.replicas):
                try:
                    PerfModel(get_gpu(group.gpu), get_model(model.catalogue or name), group.tp)
                    group.limits()
                except ValueError as exc:
                    raise ValueError(f"models.{name}.replicas.{i}: {exc}") from None
        duration = self.workload.duration_s
        if duration is not None:
            error = timeseries_rows_error(
                duration,
                self.output.timeseries_interval_s,
                f"workload.duration_s {duration:g} s",
            )
            if error is not None:
                raise ValueError(error)
        for model_name in self.workload.model_names():
            if model_name not in self.models:
                raise ValueError(
                    f"the workload sends requests to model {model_name!r}, which is not "
                    f"among models {sorted(self.models)}"
                )
        for slo_class in self.workload.slo_class_names():
            if slo_class not in self.slo_classes:
                raise ValueError(
                    f"the workload uses SLO class {slo_class!r}, which is not among "
                    f"slo_classes {sorted(self.slo_classes)}"
                )
        return self


def load_scenario(path: Path) -> Scenario:
    """The scenario at ``path``; `ConfigError` says which line is wrong and why."""
    return load_yaml(path, Scenario, what="scenario", context={"base_dir": path.parent})


def _with_policies(data: dict[str, Any], config: Config) -> dict[str, Any]:
    """The scenario's own keys, completed from a gateway config."""
    out = dict(data)
    defaults = {
        "slo_classes": {n: c.model_dump() for n, c in config.slo_classes.items()},
        "default_slo_class": config.default_slo_class,
        "queue_aging_s": config.queue_aging_s,
        "gateway": config.gateway.model_dump(),
        "tenants": {n: {"weight": t.weight} for n, t in config.tenants.items()},
    }
    for key, value in defaults.items():
        out.setdefault(key, value)
    models = {}
    for name, model in dict(out.get("models") or {}).items():
        live = config.models.get(name)
        if live is None or not isinstance(model, dict):
            models[name] = model
            continue
        model = {"routing": str(live.routing), "fallback": list(live.fallback), **model}
        groups = model.get("replicas")
        if isinstance(groups, list) and sum(g.get("count", 1) for g in groups) == len(
            live.backends
        ):
            model["replicas"] = _with_limits(groups, live.backends)
        models[name] = model
    out["models"] = models
    return out


def _with_limits(groups: list[dict[str, Any]], backends: list[Backend]) -> list[dict[str, Any]]:
    """Replica groups given the gateway's per-backend limits, in order, where the group
    sets none and the backends of the group agree on a number."""
    out, i = [], 0
    for group in groups:
        mine = backends[i : i + group.get("count", 1)]
        i += len(mine)
        group = dict(group)
        for key in ("max_concurrency", "max_tokens_in_flight"):
            values = {getattr(b, key) for b in mine}
            if key not in group and len(values) == 1:
                value = values.pop()
                if isinstance(value, int):
                    group[key] = value
        out.append(group)
    return out
