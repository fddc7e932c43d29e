"""A twin run: arrivals in, the simulated gateway and fleet in between, measurements out.

Arrivals are pulled from the workload one at a time (the next one is scheduled
when the current one arrives), per-request rows are written as requests end,
and everything else is counted, so memory does not grow with the number of
requests. Same scenario and seed, same bytes out.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from inferplane.twin._dynamics import Failures, PoolScaler
from inferplane.twin._gateway import SimGateway, SimRequest
from inferplane.twin._loop import EventLoop
from inferplane.twin._replica import ReplicaState
from inferplane.twin._scenario import Scenario, timeseries_rows_error
from inferplane.twin._stats import Stats, summarize
from inferplane.twin._workload import Arrival, arrivals

if TYPE_CHECKING:
    from _csv import Writer as _CsvWriter

__all__ = ["REQUEST_COLUMNS", "Simulation"]

REQUEST_COLUMNS = (
    "request_id",
    "arrival_s",
    "tenant",
    "workflow",
    "slo_class",
    "model",
    "served_by",
    "replica",
    "outcome",
    "prompt_tokens",
    "output_tokens",
    "queue_s",
    "ttft_s",
    "tpot_s",
    "e2e_s",
    "slo_met",
    "retries",
)

# Told (simulated seconds so far, seconds of arrivals in the workload or None).
Progress = Callable[[float, float | None], None]


class Simulation:
    def __init__(
        self,
        scenario: Scenario,
        *,
        base_dir: Path = Path("."),
        requests_out: TextIO | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.scenario = scenario
        self.loop = EventLoop()
        self.gateway = SimGateway(scenario, self.loop, self._ended)
        self.scalers = {
            name: PoolScaler(self.gateway, route, self.loop)
            for name, route in self.gateway.routes.items()
            if route.spec.autoscale is not None
        }
        self.failures = {
            name: Failures(self.gateway, route, self.loop, scenario.seed)
            for name, route in self.gateway.routes.items()
            if route.spec.failures is not None
        }
        self.stats = Stats()
        self.timeseries: list[dict[str, Any]] = []
        self._arrivals: Iterator[Arrival] = self._workload(base_dir)
        self._rows: _CsvWriter | None = None
        if requests_out is not None:
            self.record_requests(requests_out)
        self._progress = progress
        self._count = 0
        self._open = 0  # arrived and not ended
        self._last_arrival = 0.0
        self._end = 0.0
        self._exhausted = False
        self._ttft_targets = {n: c.ttft_s for n, c in scenario.slo_classes.items()}
        self._usage: dict[tuple[str, str], _Usage] = defaultdict(_Usage)  # (model, workflow)
        self._weights = {n: float(m.input_token_weight) for n, m in scenario.models.items()}
        self._window: dict[str, int] = defaultdict(int)  # counts since the last sample
        self._busy_mark = [0.0] * len(self.gateway.replicas)
        self._up_mark = [0.0] * len(self.gateway.replicas)
        self._sampled_at = 0.0

    def _workload(self, base_dir: Path) -> Iterator[Arrival]:
        sc = self.scenario

        def read() -> Iterator[Arrival]:
            return arrivals(
                sc.workload,
                seed=sc.seed,
                base_dir=base_dir,
                models=sc.models.keys(),
                slo_classes=sc.slo_classes.keys(),
                default_slo_class=sc.default_slo_class,
            )

        if sc.workload.trace is not None:
            # Read a trace through once before the run: a row it cannot replay (an
            # unknown model or class, a bad number, out of order) fails here with its
            # line, not halfway through the run. Streamed: memory stays flat.
            last = 0.0
            for arrival in read():
                last = arrival.time
            if sc.workload.duration_s is None:  # else checked with the scenario
                interval = sc.output.timeseries_interval_s
                error = timeseries_rows_error(last, interval, f"trace {sc.workload.trace}")
                if error is not None:
                    raise ValueError(error)
        return read()

    def record_requests(self, out: TextIO) -> None:
        """Write one CSV row per request to ``out`` as it ends (a header first)."""
        self._rows = csv.writer(out, lineterminator="\n")
        self._rows.writerow(REQUEST_COLUMNS)

    def run(self) -> dict[str, Any]:
        """Simulate until every arrival has ended; return the summary (JSON-ready)."""
        self.loop.at(0.0, self._sample)
        self._next_arrival()
        self.loop.run()
        self._sample(self._end)
        return self.summary()

    # -- arrivals --------------------------------------------------------------

    def _next_arrival(self) -> None:
        arrival = next(self._arrivals, None)
        if arrival is None:
            self._exhausted = True
            self._finish_if_done(self._last_arrival)
            return
        self.loop.at(arrival.time, self._arrive, arrival)

    def _arrive(self, now: float, arrival: Arrival) -> None:
        self._count += 1
        self._open += 1
        self._last_arrival = now
        request = SimRequest(
            f"r{self._count}",
            arrival,
            arrival.model,
            arrival.slo_class,
            arrival.prompt_tokens + arrival.output_tokens,
        )
        self.stats.cell(arrival.slo_class, arrival.tenant).totals.arrived += 1
        self._window["arrived"] += 1
        self.gateway.submit(request, now)
        self._next_arrival()

    # -- outcomes --------------------------------------------------------------

    def _ended(self, request: SimRequest, now: float, outcome: str) -> None:
        a = request.arrival
        cell = self.stats.cell(a.slo_class, a.tenant)
        t = cell.totals
        ttft = tpot = e2e = queue = None
        met = False
        self._open -= 1
        if outcome == "completed":
            assert request.first_token_at is not None
            t.completed += 1
            t.input_tokens += a.prompt_tokens
            t.output_tokens += a.output_tokens
            queue = request.dispatched_at - a.time
            ttft = request.first_token_at - a.time
            e2e = now - a.time
            s = cell.sketches
            s["queue"].add(queue)
            s["ttft"].add(ttft)
            s["e2e"].add(e2e)
            if a.output_tokens > 1:
                tpot = (now - request.first_token_at) / (a.output_tokens - 1)
                s["tpot"].add(tpot)
            target = self._ttft_targets[a.slo_class]
            met = target is None or ttft <= target
            t.met_slo += met
            usage = self._usage[(request.model, a.workflow or "")]
            usage.requests += 1
            usage.weighted_tokens += (
                a.output_tokens + a.prompt_tokens * self._weights[request.model]
            )
            self._window["completed"] += 1
        elif outcome == "replica_failed":
            t.failed += 1
            self._window["failed"] += 1
        else:
            t.rejected[outcome] += 1
            self._window["rejected"] += 1
        if self._rows is not None:
            replica = request.replica.name if request.replica is not None else ""
            self._rows.writerow(
                (
                    request.id,
                    _num(a.time),
                    a.tenant,
                    a.workflow or "",
                    a.slo_class,
                    a.model,
                    request.model,
                    replica,
                    outcome,
                    a.prompt_tokens,
                    a.output_tokens,
                    _num(queue),
                    _num(ttft),
                    _num(tpot),
                    _num(e2e),
                    int(met),
                    request.retries,
                )
            )
        self._finish_if_done(now)

    def _finish_if_done(self, now: float) -> None:
        """Every arrival has ended: stop (autoscaling and failures would go on for ever)."""
        if self._exhausted and self._open == 0:
            self._end = now
            self.loop.stop()

    # -- time series -------------------------------------------------------------

    def _sample(self, now: float, _: object = None) -> None:
        interval = self.scenario.output.timeseries_interval_s
        row: dict[str, Any] = {"time_s": now, **self._window}
        self._window.clear()
        for name, route in self.gateway.routes.items():
            busy = 0.0
            up = []  # each replica's seconds ready or draining in the interval
            for r in route.replicas:
                b, u = r.busy_until(now), r.up_until(now)
                busy += b - self._busy_mark[r.index]
                up.append(u - self._up_mark[r.index])
                self._busy_mark[r.index], self._up_mark[r.index] = b, u
            # Busy over up time, not over the replicas ready at this instant (one that
            # failed or drained away was busy in the interval too): within [0, 1]. fsum:
            # n replicas up the whole interval give exactly n x the interval.
            up_s = math.fsum(up)
            ready = [r for r in route.replicas if r.state is ReplicaState.READY]
            n = max(1, len(ready))
            row[f"{name}.ready"] = len(ready)
            for state in (ReplicaState.STARTING, ReplicaState.FAILED):
                row[f"{name}.{state.value}"] = route.count(state)
            row[f"{name}.queued"] = len(route.waiting)
            row[f"{name}.in_engine"] = sum(r.in_engine for r in route.replicas)
            row[f"{name}.busy_fraction"] = min(1.0, busy / up_s) if up_s > 0 else 0.0
            row[f"{name}.kv_usage"] = sum(r.core.kv_usage for r in ready) / n
        self._sampled_at = now
        self.timeseries.append(row)
        if self._progress is not None:
            self._progress(now, self.scenario.workload.duration_s)
        self.loop.at(now + interval, self._sample)

    # -- summary ---------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        end = self._end
        window = self._last_arrival if self._last_arrival > 0 else end
        total = self.stats.view("all").get("all")
        replicas = []
        cost_by_model: dict[str, float] = defaultdict(float)
        for name, route in self.gateway.routes.items():
            for r in route.replicas:
                billed = r.billed_until(end)
                if billed == 0:
                    continue  # never provisioned
                cost = r.price_per_hour * billed / 3600
                cost_by_model[name] += cost
                replicas.append(
                    {
                        "name": r.name,
                        "billed_s": billed,
                        "busy_fraction": r.busy_until(end) / billed,
                        "price_per_hour": r.price_per_hour,
                        "cost_usd": cost,
                    }
                )
        return {
            "requests": self._count,
            "arrival_window_s": window,
            "makespan_s": end,
            "total": summarize(total, window) if total else None,
            "by_class": {k: summarize(c, window) for k, c in self.stats.view("class").items()},
            "by_tenant": {k: summarize(c, window) for k, c in self.stats.view("tenant").items()},
            "replicas": replicas,
            "cost": self._cost(cost_by_model, total.totals if total else None),
            "autoscaling": {
                name: {
                    "cold_start_s": scaler.cold_start_s,
                    "decisions": [
                        {"time_s": t, "target": n, "reason": why} for t, n, why in scaler.decisions
                    ],
                }
                for name, scaler in self.scalers.items()
            },
            "failures": {name: f.outages for name, f in self.failures.items()},
        }

    def _cost(self, by_model: dict[str, float], totals: Any) -> dict[str, Any]:
        """The fleet's bill (every replica for the whole run, idle time included), and
        its split between workflows by weighted tokens, as ``per_hour`` pricing does."""
        fleet = sum(by_model.values())
        weighted: dict[str, float] = defaultdict(float)
        for (model, _), usage in self._usage.items():
            weighted[model] += usage.weighted_tokens
        # Typed apart, not as one dict of floats: compiled, that would turn counts into floats.
        requests: dict[str, int] = defaultdict(int)
        costs: dict[str, float] = defaultdict(float)
        for (model, workflow), usage in sorted(self._usage.items(), key=lambda kv: kv[0]):
            w = usage.weighted_tokens
            costs[workflow or "(none)"] += (
                by_model[model] * w / weighted[model] if weighted[model] else 0.0
            )
            requests[workflow or "(none)"] += usage.requests
        workflows = {
            name: {"requests": n, "cost_usd": costs[name], "cost_per_request_usd": costs[name] / n}
            for name, n in requests.items()
        }
        tokens = totals.input_tokens + totals.output_tokens if totals else 0
        completed = totals.completed if totals else 0
        return {
            "fleet_usd": fleet,
            "per_1m_tokens_usd": fleet / tokens * 1e6 if tokens else None,
            "per_request_usd": fleet / completed if completed else None,
            "by_workflow": workflows,
        }


@dataclass(slots=True)
class _Usage:
    """What one model served one workflow, for the cost split."""

    requests: int = 0
    weighted_tokens: float = 0.0


def _num(value: float | None) -> str:
    """Seconds in CSV: microsecond resolution, empty when not applicable."""
    return "" if value is None or math.isnan(value) else f"{value:.6f}"
