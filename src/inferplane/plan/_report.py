"""A plan result read for the reports: typed views over the planner's JSON-able dict.

The planner hands its result over as plain JSON-able data (it is also written out as
JSON), so both renderers read it through these views: every optional key may be
missing, numbers may be ``None`` or non-finite (an overloaded fleet's P99 is unbounded),
and nothing here raises on a result that merely lacks a section. Also the number
formats both reports share, so the HTML and the Markdown never disagree on a figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Candidate",
    "CloudVsOwned",
    "CurvePoint",
    "PlanReport",
    "RegionShare",
    "SloTargets",
    "SpikeRun",
    "count",
    "percent",
    "read_result",
    "seconds",
    "usd",
]


def _float(value: Any) -> float | None:
    # bool is an int to Python but never a measurement here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None and math.isfinite(number) else None


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list | tuple) else ()


def _floats(value: Any) -> dict[str, float | None]:
    return {str(name): _float(number) for name, number in _map(value).items()}


@dataclass(frozen=True)
class SloTargets:
    ttft_p99_s: float | None
    e2e_p99_s: float | None
    min_attainment: float | None


@dataclass(frozen=True)
class RegionShare:
    """The replicas of a configuration in one region; an unnamed region has name ``""``."""

    name: str
    replicas: int | None


@dataclass(frozen=True)
class Candidate:
    """One evaluated configuration; ``key`` names it (``H100 x TP1 x 4``, with its regions
    where they have names: ``H100 x TP1 x 4 in eu-west, us-east``)."""

    key: str
    gpu: str
    tp: int | None
    replicas: int | None
    gpus: int | None
    regions: list[RegionShare]
    infeasible_reason: str  # why it cannot be had (a quota, max_gpus); "" when it can
    meets_slo: bool
    source: str
    ttft_p99_s: dict[str, float | None]
    e2e_p99_s: dict[str, float | None]
    attainment: dict[str, float | None]
    utilisation: float | None
    usd_per_hour: dict[str, float | None]
    usd_per_1m_tokens: float | None
    usd_per_request: float | None
    bottleneck: str
    bottleneck_reason: str

    @property
    def passes(self) -> bool:
        """Meets every SLO and can be had."""
        return self.meets_slo and not self.infeasible_reason

    def where(self) -> str:
        """Replicas per named region: ``eu-west 4 · us-east 4``; "" when none is named."""
        return " · ".join(
            f"{share.name} {count(share.replicas)}" for share in self.regions if share.name
        )


@dataclass(frozen=True)
class CurvePoint:
    utilisation: float
    load_rps: float | None
    ttft_p99_s: float | None
    meets_slo: bool


@dataclass(frozen=True)
class SpikeRun:
    ttft_p99_s: float | None
    attainment: float | None
    replicas_over_time: list[tuple[float, int]]


@dataclass(frozen=True)
class CloudVsOwned:
    months: list[int]
    cloud_cumulative_usd: list[float | None]
    owned_cumulative_usd: list[float | None]
    break_even_month: int | None
    break_even_utilisation: float | None


@dataclass(frozen=True)
class PlanReport:
    """Everything a report shows; sections the planner did not produce are empty or None."""

    name: str
    model: str
    peak_rps: float | None
    average_rps: float | None
    spike_factor: float | None
    slos: dict[str, SloTargets]
    allowed_regions: list[str]  # the plan's allow-list; empty: any region
    min_regions: int | None
    candidates: list[Candidate]
    best: Candidate | None
    runner_up_by_gpu: dict[str, Candidate]
    closest: list[Candidate]
    curves: dict[str, list[CurvePoint]]
    utilisation_target: float | None
    spike_test: dict[str, SpikeRun]  # "with_autoscaling" / "without_autoscaling"
    cloud_vs_owned: CloudVsOwned | None
    seed: int | None
    elapsed_s: float | None
    skipped: list[str]  # GPU and TP pairs never evaluated, each with why: "L4 x TP1: ..."

    def decision_rows(self) -> list[tuple[str, Candidate]]:
        """The best configuration, the runner-up on each GPU type (by name), then on each
        GPU type with none, the cheapest that meets the SLOs but a quota stops; each
        configuration once: the decision table's rows."""
        rows: list[tuple[str, Candidate]] = []
        if self.best is not None:
            rows.append(("Best", self.best))
        seen = {candidate.key for _, candidate in rows}
        for gpu in sorted(self.runner_up_by_gpu):
            candidate = self.runner_up_by_gpu[gpu]
            if candidate.key not in seen:
                rows.append((f"Runner-up on {gpu}", candidate))
                seen.add(candidate.key)
        for gpu, candidate in sorted(self.beyond_quota_by_gpu().items()):
            if gpu not in self.runner_up_by_gpu:
                rows.append((f"Beyond quota on {gpu}", candidate))
        return rows

    def beyond_quota_by_gpu(self) -> dict[str, Candidate]:
        """Per GPU type, the cheapest configuration that meets the SLOs but cannot be had."""
        cheapest: dict[str, Candidate] = {}
        blocked = [c for c in self.candidates if c.meets_slo and not c.passes]
        for c in sorted(blocked, key=lambda c: c.usd_per_hour.get("on_demand") or math.inf):
            cheapest.setdefault(c.gpu, c)
        return cheapest

    def ttft_slo(self) -> tuple[str, float] | None:
        """The strictest P99 TTFT target and its class: the line the curves must stay under."""
        targets = [(slo.ttft_p99_s, name) for name, slo in self.slos.items() if slo.ttft_p99_s]
        if not targets:
            return None
        target, name = min(targets)
        return name, target

    def min_attainment(self) -> float | None:
        """The strictest attainment any class asks for."""
        floors = [slo.min_attainment for slo in self.slos.values() if slo.min_attainment]
        return max(floors) if floors else None

    def gpu_types(self) -> list[str]:
        """Every GPU type that appears, sorted: the order of the colours in every plot."""
        named = [c.gpu for c in self.candidates]
        named += [c.gpu for c in self.closest] + list(self.runner_up_by_gpu)
        if self.best is not None:
            named.append(self.best.gpu)
        return sorted({gpu for gpu in named if gpu})

    def class_names(self) -> list[str]:
        """SLO classes in the plan's order, then any class only the candidates mention."""
        names = list(self.slos)
        for candidate in [*self.candidates, *self.closest]:
            names += [name for name in candidate.ttft_p99_s if name not in names]
        return names

    def num_meeting_slo(self) -> int:
        return sum(candidate.meets_slo for candidate in self.candidates)

    def num_passing(self) -> int:
        """Those that meet the SLOs and can be had."""
        return sum(candidate.passes for candidate in self.candidates)

    def tally(self) -> str:
        """``144 configurations evaluated, 61 meet the SLOs`` (``, 3 of them beyond a
        quota`` when some cannot be had)."""
        meeting = self.num_meeting_slo()
        text = f"{len(self.candidates)} configurations evaluated, {meeting} meet the SLOs"
        blocked = meeting - self.num_passing()
        return text + (f", {blocked} of them beyond a quota" if blocked else "")

    def no_solution(self) -> str:
        """The headline when nothing passes: SLOs missed, or quotas in the way."""
        if any(c.meets_slo for c in self.candidates):
            return "No configuration that meets the SLOs fits the quotas"
        return "No configuration meets the SLOs"

    def shows_regions(self) -> bool:
        """Whether any configuration names its regions or cannot be had: the tables'
        Regions column."""
        return any(c.where() or c.infeasible_reason for c in [*self.candidates, *self.closest])

    def spread(self) -> list[str]:
        """The plan's region constraints in words, for the header; empty when it has none."""
        facts = [f"regions {', '.join(self.allowed_regions)}"] if self.allowed_regions else []
        if self.min_regions is not None and self.min_regions > 1:
            facts.append(f"spread over {self.min_regions} regions, any one may be lost")
        return facts

    def misses(self, candidate: Candidate) -> list[str]:
        """What a candidate fails, in words: ``interactive P99 TTFT 820 ms (target 500 ms)``,
        ``needs 12 H100 in eu-west, quota 8``."""
        found = [candidate.infeasible_reason] if candidate.infeasible_reason else []
        for name, slo in self.slos.items():
            for what, target, measured in (
                ("P99 TTFT", slo.ttft_p99_s, candidate.ttft_p99_s.get(name)),
                ("P99 e2e", slo.e2e_p99_s, candidate.e2e_p99_s.get(name)),
            ):
                if target is not None and measured is not None and not measured <= target:
                    found.append(f"{name} {what} {seconds(measured)} (target {seconds(target)})")
            floor, attained = slo.min_attainment, candidate.attainment.get(name)
            if floor is not None and attained is not None and attained < floor:
                found.append(
                    f"{name} attainment {percent(attained, 1)} (target {percent(floor, 1)})"
                )
        return found

    def class_cell(self, candidate: Candidate, name: str) -> str:
        """One class's numbers for a table cell: P99 TTFT · P99 e2e · attainment."""
        return " · ".join(
            (
                seconds(candidate.ttft_p99_s.get(name)),
                seconds(candidate.e2e_p99_s.get(name)),
                percent(candidate.attainment.get(name), 1),
            )
        )


def _candidate(raw: Any) -> Candidate | None:
    data = _map(raw)
    key = _str(data.get("key"))
    if not key:
        return None
    return Candidate(
        key=key,
        gpu=_str(data.get("gpu")),
        tp=_int(data.get("tp")),
        replicas=_int(data.get("replicas")),
        gpus=_int(data.get("gpus")),
        regions=[
            RegionShare(_str(share.get("region")), _int(share.get("replicas")))
            for share in map(_map, _seq(data.get("regions")))
        ],
        infeasible_reason=_str(data.get("infeasible_reason")),
        meets_slo=data.get("meets_slo") is True,
        source=_str(data.get("source")),
        ttft_p99_s=_floats(data.get("ttft_p99_s")),
        e2e_p99_s=_floats(data.get("e2e_p99_s")),
        attainment=_floats(data.get("attainment")),
        utilisation=_float(data.get("utilisation")),
        usd_per_hour=_floats(data.get("usd_per_hour")),
        usd_per_1m_tokens=_float(data.get("usd_per_1m_tokens")),
        usd_per_request=_float(data.get("usd_per_request")),
        bottleneck=_str(data.get("bottleneck")),
        bottleneck_reason=_str(data.get("bottleneck_reason")),
    )


def _candidates(raw: Any) -> list[Candidate]:
    return [c for c in map(_candidate, _seq(raw)) if c is not None]


def _curve(raw: Any) -> list[CurvePoint]:
    points = []
    for point in map(_map, _seq(raw)):
        utilisation = _float(point.get("utilisation"))
        if utilisation is None or not math.isfinite(utilisation):
            continue
        points.append(
            CurvePoint(
                utilisation=utilisation,
                load_rps=_float(point.get("load_rps")),
                ttft_p99_s=_float(point.get("ttft_p99_s")),
                meets_slo=point.get("meets_slo") is True,
            )
        )
    return sorted(points, key=lambda p: p.utilisation)


def _spike_run(raw: Any) -> SpikeRun:
    data = _map(raw)
    steps = []
    for step in _seq(data.get("replicas_over_time")):
        pair = _seq(step)
        if (
            len(pair) == 2
            and (t := _float(pair[0])) is not None
            and (n := _int(pair[1])) is not None
        ):
            steps.append((t, n))
    return SpikeRun(_float(data.get("ttft_p99_s")), _float(data.get("attainment")), steps)


def _cloud_vs_owned(raw: Any) -> CloudVsOwned | None:
    data = _map(raw)
    months = [m for m in map(_int, _seq(data.get("months"))) if m is not None]
    if not months:
        return None
    return CloudVsOwned(
        months=months,
        cloud_cumulative_usd=[_float(v) for v in _seq(data.get("cloud_cumulative_usd"))],
        owned_cumulative_usd=[_float(v) for v in _seq(data.get("owned_cumulative_usd"))],
        break_even_month=_int(data.get("break_even_month")),
        break_even_utilisation=_float(data.get("break_even_utilisation")),
    )


def _skipped(raw: Any) -> str:
    data = _map(raw)
    tp = _int(data.get("tp"))
    what = _str(data.get("gpu"), "?") + (f" x TP{tp}" if tp is not None else "")
    reason = _str(data.get("reason"))
    return f"{what}: {reason}" if reason else what


def read_result(result: Mapping[str, Any]) -> PlanReport:
    """The views of one planner result; tolerant of missing optional sections."""
    plan = _map(result.get("plan"))
    workload = _map(plan.get("workload"))
    slos = {
        str(name): SloTargets(
            _float(_map(slo).get("ttft_p99_s")),
            _float(_map(slo).get("e2e_p99_s")),
            _float(_map(slo).get("min_attainment")),
        )
        for name, slo in _map(plan.get("slos")).items()
    }
    runner_ups = {
        str(gpu): _candidate(raw) for gpu, raw in _map(result.get("runner_up_by_gpu")).items()
    }
    spike = _map(result.get("spike_test"))
    return PlanReport(
        name=_str(plan.get("name"), "capacity plan"),
        model=_str(plan.get("model")),
        peak_rps=_float(workload.get("peak_rps")),
        average_rps=_float(workload.get("average_rps")),
        spike_factor=_float(workload.get("spike_factor")),
        slos=slos,
        allowed_regions=[str(name) for name in _seq(plan.get("regions"))],
        min_regions=_int(plan.get("min_regions")),
        candidates=_candidates(result.get("candidates")),
        best=_candidate(result.get("best")),
        runner_up_by_gpu={gpu: c for gpu, c in runner_ups.items() if c is not None},
        closest=_candidates(result.get("closest")),
        curves={str(key): _curve(points) for key, points in _map(result.get("curves")).items()},
        utilisation_target=_float(result.get("utilisation_target")),
        spike_test={name: _spike_run(spike[name]) for name in spike if isinstance(name, str)},
        cloud_vs_owned=_cloud_vs_owned(result.get("cloud_vs_owned")),
        seed=_int(result.get("seed")),
        elapsed_s=_float(result.get("elapsed_s")),
        skipped=[_skipped(raw) for raw in _seq(result.get("skipped"))],
    )


# Number formats shared by both reports. None is "not measured", infinity "unbounded".


def usd(value: float | None) -> str:
    """Dollars with the precision the size needs: $12,400 / $3.20 / $0.000412."""
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if value == 0:
        return "$0"
    # Three significant figures, never in exponent form: $0.0000521, not $5.21e-05.
    decimals = 2 - math.floor(math.log10(abs(value)))
    return f"${value:.{decimals}f}"


def seconds(value: float | None) -> str:
    """A latency: milliseconds under a second, seconds above."""
    if value is None or math.isnan(value):
        return "—"
    if math.isinf(value):
        return "unbounded"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def percent(value: float | None, digits: int = 0) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * 100:.{digits}f}%"


def count(value: float | None, unit: str = "") -> str:
    """A rate or a count, trimmed: 30 req/s, 12.5 req/s."""
    if value is None or not math.isfinite(value):
        return "—"
    text = f"{value:,.0f}" if value == round(value) or abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".rstrip()
