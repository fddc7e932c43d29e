"""The plan as a concise Markdown summary (``inferplane plan --format md``).

Names come from the user's YAML, so each one is escaped: it can neither close a table
cell nor open a link, emphasis or raw HTML in a renderer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from inferplane.plan._report import (
    Candidate,
    PlanReport,
    count,
    percent,
    read_result,
    seconds,
    usd,
)

__all__ = ["render_markdown"]

_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _md(text: str) -> str:
    """``text`` as literal Markdown inline text on one line."""
    text = " ".join(text.split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", text)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _bottleneck(candidate: Candidate) -> str:
    words = _md(candidate.bottleneck) or "—"
    return f"{words} ({_md(candidate.bottleneck_reason)})" if candidate.bottleneck_reason else words


def _regions(candidate: Candidate, *, why: bool) -> str:
    """Replicas per region; ``why``: and why the configuration cannot be had."""
    where = _md(candidate.where()) or "—"
    reason = candidate.infeasible_reason
    return f"{where} (**{_md(reason)}**)" if why and reason else where


def _candidate_table(
    report: PlanReport, rows: list[tuple[str, Candidate]], *, misses: bool = False
) -> list[str]:
    """One row per candidate; ``misses`` adds a last column saying which SLOs it fails
    (and, instead of the regions column, which quota it exceeds)."""
    classes = report.class_names()
    regions = report.shows_regions()
    header = ["", "configuration", *(["regions (replicas in each)"] if regions else [])]
    header += ["GPUs", "$/h on demand", "$/1M tokens", "$/request"]
    header += ["utilisation", *(f"{_md(name)} P99 TTFT · e2e · attained" for name in classes)]
    header += ["bottleneck", "misses"] if misses else ["bottleneck"]
    body = []
    for role, c in rows:
        cells = [
            _md(role),
            f"**{_md(c.key)}**",
            *([_regions(c, why=not misses)] if regions else []),
        ]
        cells += [count(c.gpus), usd(c.usd_per_hour.get("on_demand"))]
        cells += [usd(c.usd_per_1m_tokens), usd(c.usd_per_request), percent(c.utilisation)]
        cells += [report.class_cell(c, name) for name in classes]
        cells.append(_bottleneck(c))
        if misses:
            cells.append(_md("; ".join(report.misses(c))) or "—")
        body.append(cells)
    return _table(header, body)


def _header(report: PlanReport) -> list[str]:
    facts = []
    if report.model:
        facts.append(f"**Model** {_md(report.model)}")
    facts.append(f"**peak** {count(report.peak_rps, 'req/s')}")
    facts.append(f"**average** {count(report.average_rps, 'req/s')}")
    if report.spike_factor is not None:
        facts.append(f"**spike** ×{count(report.spike_factor)}")
    facts += [_md(fact) for fact in report.spread()]
    facts.append(report.tally())
    lines = [f"# Capacity plan: {_md(report.name)}", "", " · ".join(facts), ""]
    if report.slos:
        rows = [
            [
                _md(name),
                seconds(slo.ttft_p99_s),
                seconds(slo.e2e_p99_s),
                percent(slo.min_attainment, 1),
            ]
            for name, slo in report.slos.items()
        ]
        lines += [*_table(["class", "P99 TTFT", "P99 e2e", "min attainment"], rows), ""]
    return lines


def _decision(report: PlanReport) -> list[str]:
    lines = ["## Decision", ""]
    best = report.best
    if best is None:
        lines += [f"**{report.no_solution()}.**", ""]
        if not report.closest:
            return lines
        lines += ["The closest candidates, and what each misses:", ""]
        rows = [(f"#{rank}", c) for rank, c in enumerate(report.closest, 1)]
        return [*lines, *_candidate_table(report, rows, misses=True), ""]
    prices = ", ".join(
        f"{usd(price)}/h {kind.replace('_', ' ')}"
        for kind, price in best.usd_per_hour.items()
        if price is not None
    )
    lines += [
        f"**Run {_md(best.key)}**: {count(best.gpus)} GPUs ({prices}), "
        f"{usd(best.usd_per_1m_tokens)} per 1M tokens, {usd(best.usd_per_request)} per request, "
        f"{percent(best.utilisation)} utilisation at peak; bottleneck: {_bottleneck(best)}."
        + (f" Replicas by region: {_md(best.where())}." if best.where() else ""),
        "",
    ]
    return lines + _candidate_table(report, report.decision_rows()) + [""]


def _skipped(report: PlanReport) -> list[str]:
    if not report.skipped:
        return []
    return ["Not evaluated: " + "; ".join(_md(line) for line in report.skipped) + ".", ""]


def _spike_line(report: PlanReport) -> list[str]:
    runs = report.spike_test
    if not runs:
        return []
    parts = []
    for name, label in (
        ("with_autoscaling", "with autoscaling"),
        ("without_autoscaling", "without"),
    ):
        if (run := runs.get(name)) is None:
            continue
        replicas = [n for _, n in run.replicas_over_time]
        scale = ""
        if replicas:
            low, high = min(replicas), max(replicas)
            scale = f", {low}→{high} replicas" if high != low else f", {low} replicas"
        parts.append(
            f"{label}: P99 TTFT {seconds(run.ttft_p99_s)}, "
            f"attainment {percent(run.attainment, 1)}{scale}"
        )
    spike = f" (peak ×{count(report.spike_factor)})" if report.spike_factor else ""
    return [f"- **Spike test**{spike}: " + "; ".join(parts) + "."]


def _economics_line(report: PlanReport) -> list[str]:
    economics = report.cloud_vs_owned
    if economics is None:
        return []
    horizon = max(economics.months)
    if economics.break_even_month is None:
        verdict = f"owning does not break even within {horizon} months"
    else:
        verdict = f"owning breaks even in month {economics.break_even_month}"
    if economics.break_even_utilisation is not None:
        verdict += f"; it pays at or above {percent(economics.break_even_utilisation)} utilisation"
    last = []
    if economics.cloud_cumulative_usd and economics.owned_cumulative_usd:
        cloud, owned = economics.cloud_cumulative_usd[-1], economics.owned_cumulative_usd[-1]
        last = [f" (month {horizon}: cloud {usd(cloud)}, owned {usd(owned)})"]
    return [f"- **Cloud vs owned** over {horizon} months: {verdict}{''.join(last)}."]


def _monthly_line(result: Mapping[str, Any]) -> list[str]:
    monthly = result.get("monthly_cost")
    if not isinstance(monthly, Mapping):
        return []
    fixed, follow = (
        monthly.get("fixed_fleet_monthly_usd"),
        monthly.get("follow_the_day_monthly_usd"),
    )
    if not isinstance(fixed, (int, float)) or not isinstance(follow, (int, float)):
        return []
    return [
        f"- **A month in the cloud** (on demand): {usd(fixed)} for the fleet sized for the "
        f"peak, {usd(follow)} for one that follows the day (average to peak), cold starts "
        "aside."
    ]


def _key_numbers(report: PlanReport, extra: list[str]) -> list[str]:
    lines = []
    if report.utilisation_target is not None:
        spike = f" ×{count(report.spike_factor)}" if report.spike_factor else ""
        lines.append(
            f"- **Utilisation target**: {percent(report.utilisation_target)}, the highest "
            f"utilisation whose P99 TTFT survives the{spike} spike."
        )
    lines += _spike_line(report) + _economics_line(report) + extra
    return ["## Key numbers", "", *lines, ""] if lines else []


def render_markdown(result: Mapping[str, Any]) -> str:
    """A Markdown summary of a planner result: the decision table (or, when nothing
    meets the SLOs, the closest candidates and what they miss), the key numbers and the
    break-even. Every user-supplied name is escaped."""
    report = read_result(result)
    lines = _header(report) + _decision(report) + _skipped(report)
    lines += _key_numbers(report, _monthly_line(result))
    footer = []
    if report.seed is not None:
        footer.append(f"seed {report.seed}")
    if report.elapsed_s is not None:
        footer.append(f"planned in {report.elapsed_s:.1f} s")
    if footer:
        lines.append("_" + " · ".join(footer) + "_")
    return "\n".join(lines).rstrip() + "\n"
