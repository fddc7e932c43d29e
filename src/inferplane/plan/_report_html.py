"""The plan as one self-contained HTML page: verdict, decision table, plots, all candidates.

The plots are drawn by plotly.js, inlined once (about 4.8 MB) so the page opens with no
network; the figures themselves are plain plotly JSON (``_report_plots``), so nothing of
plotly's Python API is needed but the script. Every name from the user's YAML is escaped
with ``html.escape``; the figure JSON sits in a ``<script type="application/json">`` block
with ``<``, ``>`` and ``&`` written as ``\\u003c``-style escapes, so no name can close it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from html import escape
from typing import Any

import plotly.offline  # type: ignore[import-untyped]

from inferplane.plan._report import (
    Candidate,
    PlanReport,
    count,
    percent,
    read_result,
    seconds,
    usd,
)
from inferplane.plan._report_plots import cost_bars, figures

__all__ = ["render_html"]


@functools.cache
def _plotly_js() -> str:
    js = str(plotly.offline.get_plotlyjs())
    # The script is inlined verbatim, so it must not be able to end its own <script> block.
    return js.replace("</script", "<\\/script")


def _esc(text: str) -> str:
    return escape(text, quote=True)


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> block: no '<', '>' or '&' left to parse as HTML."""
    text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, code)
    return text


# The page around the plots. Inline CSS and scripts only: the file must open offline.

_CSS = """
:root { --ink: #1F2933; --muted: #616E7C; --line: #E4E7EB; --ok: #1E8449; --bad: #C0392B;
  --card: #FFFFFF; --bg: #F5F7FA; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 2px 0 6px; }
h2 { font-size: 17px; margin: 0 0 4px; }
.eyebrow { text-transform: uppercase; letter-spacing: .08em; font-size: 11px; color: var(--muted); }
.facts { color: var(--muted); margin: 0 0 10px; }
.chip { display: inline-block; background: #E4E7EB; border-radius: 12px; padding: 2px 10px;
  margin: 0 6px 6px 0; font-size: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
  padding: 16px 18px; margin: 16px 0; }
.verdict { border-left: 6px solid var(--ok); display: flex; flex-wrap: wrap; gap: 18px 40px; }
.verdict.fail { border-left-color: var(--bad); }
.verdict .label { font-size: 12px; text-transform: uppercase; letter-spacing: .06em;
  color: var(--ok); font-weight: 600; }
.verdict.fail .label { color: var(--bad); }
.verdict .config { font-size: 28px; font-weight: 700; }
.verdict p { margin: 4px 0 0; max-width: 520px; color: var(--muted); }
.kpis { display: grid; grid-template-columns: repeat(4, minmax(120px, 1fr)); gap: 10px 28px;
  margin: 0; align-content: center; }
.kpis dt { font-size: 12px; color: var(--muted); }
.kpis dd { margin: 0; font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 0 16px; }
.grid .wide { grid-column: 1 / -1; }
.caption { color: var(--muted); margin: 0 0 6px; }
.plot { width: 100%; min-height: 200px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
td.nw, .v { white-space: nowrap; }
td.why { min-width: 200px; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; }
tr.best td { background: #EAF7EE; }
td small, th small { display: block; color: var(--muted); font-weight: 400; }
.src { margin-left: 6px; font-size: 11px; color: var(--muted); border: 1px solid var(--line);
  border-radius: 8px; padding: 0 6px; }
.miss { color: var(--bad); font-weight: 600; }
.meter { display: inline-block; width: 60px; height: 7px; background: var(--line);
  border-radius: 4px; margin-right: 6px; vertical-align: middle; overflow: hidden; }
.meter span { display: block; height: 100%; background: #0072B2; }
.badge { display: inline-block; border-radius: 8px; padding: 0 8px; font-size: 12px;
  font-weight: 600; color: #fff; background: #7F7F7F; }
.b-compute { background: #0072B2; } .b-memory { background: #CC79A7; }
.b-kv { background: #E69F00; } .b-queue { background: #8C6D31; }
summary { cursor: pointer; font-weight: 600; }
.scroll { overflow-x: auto; }
footer { color: var(--muted); font-size: 12px; margin-top: 24px; }
@media (max-width: 900px) { .grid { grid-template-columns: 1fr; }
  .kpis { grid-template-columns: repeat(2, 1fr); } }
"""

# Runs before plotly.js so that an error anywhere, plotly's own included, is written onto
# <html data-report-error>: a headless browser's dumped DOM then shows it.
_BOOT_JS = """(function () {
  var root = document.documentElement;
  function fail(message) {
    root.setAttribute("data-report-error", (root.getAttribute("data-report-error") || "") +
      String(message) + "\\n");
  }
  window.addEventListener("error", function (e) { fail(e.message || e); });
  window.addEventListener("unhandledrejection", function (e) { fail(e.reason); });
})();"""

# Draws every figure; <html data-plots-drawn="N"> says all N finished.
_DRAW_JS = """(function () {
  var root = document.documentElement;
  var figures = JSON.parse(document.getElementById("report-figures").textContent);
  var ids = Object.keys(figures);
  var config = {displaylogo: false, responsive: true,
    modeBarButtonsToRemove: ["select2d", "lasso2d", "autoScale2d"]};
  Promise.all(ids.map(function (id) {
    return Plotly.newPlot(id, figures[id].data, figures[id].layout, config);
  })).then(function () {
    root.setAttribute("data-plots-drawn", String(ids.length));
  }, function (error) {
    root.setAttribute("data-report-error", "plot failed: " + String(error));
  });
})();"""

_BADGES = {
    "compute": "b-compute",
    "memory bandwidth": "b-memory",
    "KV capacity": "b-kv",
    "queueing": "b-queue",
}


def _bottleneck(candidate: Candidate) -> str:
    if not candidate.bottleneck:
        return "—"
    badge = _BADGES.get(candidate.bottleneck, "")
    reason = (
        f"<small>{_esc(candidate.bottleneck_reason)}</small>" if candidate.bottleneck_reason else ""
    )
    return f'<span class="badge {badge}">{_esc(candidate.bottleneck)}</span>{reason}'


def _class_cell(report: PlanReport, candidate: Candidate, name: str) -> str:
    """P99 TTFT · P99 e2e · attained for one class, each in red where it misses."""
    slo = report.slos.get(name)
    ttft, e2e = candidate.ttft_p99_s.get(name), candidate.e2e_p99_s.get(name)
    attained = candidate.attainment.get(name)
    parts = [
        (seconds(ttft), slo is not None and slo.ttft_p99_s is not None and ttft is not None
         and not ttft <= slo.ttft_p99_s),
        (seconds(e2e), slo is not None and slo.e2e_p99_s is not None and e2e is not None
         and not e2e <= slo.e2e_p99_s),
        (percent(attained, 1), slo is not None and slo.min_attainment is not None
         and attained is not None and attained < slo.min_attainment),
    ]  # fmt: skip
    return " · ".join(
        f'<span class="v{" miss" if bad else ""}">{text}</span>' for text, bad in parts
    )


def _utilisation(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    width = max(0.0, min(1.0, value)) * 100
    return f'<span class="meter"><span style="width:{width:.0f}%"></span></span>{percent(value)}'


def _prices(candidate: Candidate) -> str:
    others = [
        f'<span class="v">{_esc(kind)} {usd(price)}</span>'
        for kind, price in candidate.usd_per_hour.items()
        if kind != "on_demand" and price is not None
    ]
    small = f"<small>{' · '.join(others)}</small>" if others else ""
    return _esc(usd(candidate.usd_per_hour.get("on_demand"))) + small


def _regions(candidate: Candidate) -> str:
    """Replicas per region, and in red why the configuration cannot be had."""
    reason = candidate.infeasible_reason
    blocked = f'<small class="miss">{_esc(reason)}</small>' if reason else ""
    return f"{_esc(candidate.where()) or '—'}{blocked}"


def _candidate_rows(
    report: PlanReport, rows: list[tuple[str, Candidate]], *, verdicts: bool = False
) -> str:
    classes = report.class_names()
    regions = report.shows_regions()
    head = ["<th></th>" if not verdicts else "<th>Meets SLOs</th>", "<th>Configuration</th>"]
    head += ["<th>Regions<small>replicas in each</small></th>"] if regions else []
    head += ['<th class="num">GPUs</th>', '<th class="num">$/h on demand</th>']
    head += ['<th class="num">$/1M tokens</th>', '<th class="num">$/request</th>']
    head += ["<th>Utilisation at peak</th>"]
    head += [f"<th>{_esc(name)}<small>P99 TTFT · e2e · attained</small></th>" for name in classes]
    head += ["<th>Bottleneck</th>"]
    body = []
    for role, c in rows:
        shape = f"<small>TP{c.tp} × {c.replicas}</small>" if c.tp and c.replicas else ""
        source = f'<span class="src">{_esc(c.source)}</span>' if c.source else ""
        cells = [
            f"<td>{_esc(role)}</td>",
            f'<td class="nw"><strong>{_esc(c.key)}</strong>{source}</td>',
            *([f'<td class="why">{_regions(c)}</td>'] if regions else []),
            f'<td class="num nw">{count(c.gpus)}{shape}</td>',
            f'<td class="num">{_prices(c)}</td>',
            f'<td class="num nw">{_esc(usd(c.usd_per_1m_tokens))}</td>',
            f'<td class="num nw">{_esc(usd(c.usd_per_request))}</td>',
            f'<td class="nw">{_utilisation(c.utilisation)}</td>',
            *(f"<td>{_class_cell(report, c, name)}</td>" for name in classes),
            f'<td class="why">{_bottleneck(c)}</td>',
        ]
        best = ' class="best"' if report.best is not None and c.key == report.best.key else ""
        body.append(f"<tr{best}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table><thead><tr>{"".join(head)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _header(report: PlanReport) -> str:
    facts = [f"model <strong>{_esc(report.model)}</strong>"] if report.model else []
    facts += [
        f"peak {count(report.peak_rps, 'req/s')}",
        f"average {count(report.average_rps, 'req/s')}",
    ]
    if report.spike_factor is not None:
        facts.append(f"spike ×{count(report.spike_factor)}")
    facts += [_esc(fact) for fact in report.spread()]
    facts.append(report.tally())
    chips = []
    for name, slo in report.slos.items():
        terms = [f"P99 TTFT ≤ {seconds(slo.ttft_p99_s)}"] if slo.ttft_p99_s else []
        terms += [f"P99 e2e ≤ {seconds(slo.e2e_p99_s)}"] if slo.e2e_p99_s else []
        terms += [f"≥ {percent(slo.min_attainment, 1)} attained"] if slo.min_attainment else []
        chips.append(
            f'<span class="chip"><strong>{_esc(name)}</strong>: {" · ".join(terms)}</span>'
        )
    return (
        '<header><div class="eyebrow">inferplane · capacity plan</div>'
        f"<h1>{_esc(report.name)}</h1>"
        f'<p class="facts">{" · ".join(facts)}</p><div>{"".join(chips)}</div></header>'
    )


def _kpi(label: str, value: str) -> str:
    return f"<div><dt>{_esc(label)}</dt><dd>{_esc(value)}</dd></div>"


def _verdict(report: PlanReport) -> str:
    best = report.best
    if best is None:
        closest = "".join(
            f"<li><strong>{_esc(c.key)}</strong>: misses {_esc(misses)}</li>"
            for c in report.closest
            if (misses := "; ".join(report.misses(c)) or "—")
        )
        listed = f"<p>The closest candidates:</p><ul>{closest}</ul>" if closest else ""
        headline = f"Closest: {_esc(report.closest[0].key)}" if report.closest else "No candidates"
        return (
            '<section class="card verdict fail" id="verdict"><div>'
            f'<div class="label">{report.no_solution()}</div>'
            f'<div class="config">{headline}</div>{listed}</div></section>'
        )
    kpis = [
        _kpi("$ per 1M tokens", usd(best.usd_per_1m_tokens)),
        _kpi("$ per request", usd(best.usd_per_request)),
        _kpi("GPUs", count(best.gpus)),
        *([_kpi("replicas by region", best.where())] if best.where() else []),
        _kpi("$ per hour on demand", usd(best.usd_per_hour.get("on_demand"))),
        _kpi("utilisation at peak", percent(best.utilisation)),
        _kpi("utilisation target", percent(report.utilisation_target)),
    ]
    if report.cloud_vs_owned is not None:
        month = report.cloud_vs_owned.break_even_month
        kpis.append(_kpi("owned breaks even", f"month {month}" if month is not None else "never"))
    kpis.append(_kpi("bottleneck", best.bottleneck or "—"))
    why = f"; {_esc(best.bottleneck_reason)}" if best.bottleneck_reason else ""
    return (
        '<section class="card verdict" id="verdict"><div>'
        '<div class="label">Recommended</div>'
        f'<div class="config">{_esc(best.key)}</div>'
        "<p>The cheapest configuration that meets every SLO at peak"
        f"{why}.</p></div><dl class='kpis'>{''.join(kpis)}</dl></section>"
    )


def _decision(report: PlanReport) -> str:
    if report.best is None:
        if not report.closest and not report.skipped:
            return ""
        rows = [(f"#{i}", c) for i, c in enumerate(report.closest, 1)]
        title, note = "Closest candidates", "Numbers in red miss their SLO."
    else:
        rows = report.decision_rows()
        title, note = "Decision", "The best configuration and the runner-up on each GPU type"
        if report.beyond_quota_by_gpu().keys() - report.runner_up_by_gpu.keys():
            note += "; where a quota stops a GPU type, its cheapest fleet meeting the SLOs"
        note += "."
    skipped = ""
    if report.skipped:
        skipped = f'<p class="caption">Not evaluated: {_esc("; ".join(report.skipped))}.</p>'
    return (
        f'<section class="card" id="decision"><h2>{title}</h2><p class="caption">{note}</p>'
        f"{_candidate_rows(report, rows) if rows else ''}{skipped}</section>"
    )


def _plot_card(figure_id: str, title: str, caption: str, *, wide: bool = False) -> str:
    return (
        f'<article class="card{" wide" if wide else ""}"><h2>{_esc(title)}</h2>'
        f'<p class="caption">{caption}</p><div class="plot" id="{figure_id}"></div></article>'
    )


def _plot_cards(report: PlanReport, present: Mapping[str, Any]) -> str:
    spike = f"×{count(report.spike_factor)}" if report.spike_factor else ""
    slo = report.ttft_slo()
    slo_words = f"the {_esc(slo[0])} P99 TTFT target of {seconds(slo[1])}" if slo else "the SLO"
    cards = []
    if "fig-curves" in present:
        target = ""
        if report.utilisation_target is not None:
            target = (
                f" The green dotted line, {percent(report.utilisation_target)}, is the highest "
                f"utilisation whose P99 survives the {spike} spike: plan to run below it."
            )
        cards.append(
            _plot_card(
                "fig-curves",
                "Utilisation vs P99 TTFT",
                f"Each line is one configuration under rising load. ✕ marks where P99 TTFT "
                f"first breaks {slo_words} (red dashes).{target}",
                wide=True,
            )
        )
    if "fig-spike-replicas" in present or "fig-spike-slo" in present:
        runs = report.spike_test
        with_, without = runs.get("with_autoscaling"), runs.get("without_autoscaling")
        summary = ""
        if with_ is not None and without is not None:
            summary = (
                f" P99 TTFT {seconds(with_.ttft_p99_s)} with autoscaling against "
                f"{seconds(without.ttft_p99_s)} without; attainment "
                f"{percent(with_.attainment, 1)} against {percent(without.attainment, 1)}."
            )
        plots = "".join(
            f'<div class="plot" id="{figure_id}"></div>'
            for figure_id in ("fig-spike-slo", "fig-spike-replicas")
            if figure_id in present
        )
        cards.append(
            '<article class="card"><h2>Spike test</h2>'
            f'<p class="caption">The recommended fleet under peak {spike}, cold starts '
            f"included.{summary}</p>{plots}</article>"
        )
    if "fig-economics" in present and (economics := report.cloud_vs_owned) is not None:
        month = economics.break_even_month
        verdict = (
            f"Owning breaks even in month {month}"
            if month is not None
            else f"Owning does not break even within {max(economics.months)} months"
        )
        if economics.break_even_utilisation is not None:
            verdict += (
                f"; it pays at or above {percent(economics.break_even_utilisation)} utilisation"
            )
        cards.append(_plot_card("fig-economics", "Cloud vs owned", f"{verdict}."))
    if "fig-cost" in present:
        bars = cost_bars(report)
        passing = report.num_passing()
        within = " within the quotas" if passing < report.num_meeting_slo() else ""
        which = (
            f"The {len(bars)} cheapest of the {passing} configurations that meet every SLO{within}"
            if passing
            else f"The {len(bars)} closest candidates (none meets every SLO{within})"
        )
        cards.append(
            _plot_card(
                "fig-cost",
                "Cost per configuration",
                f"{which}, in $ per 1M tokens at on-demand prices, coloured by GPU type; "
                "the best is outlined.",
                wide=True,
            )
        )
    return f'<section class="grid">{"".join(cards)}</section>' if cards else ""


def _all_candidates(report: PlanReport) -> str:
    if not report.candidates:
        return ""
    ordered = sorted(
        report.candidates,
        key=lambda c: (not c.passes, c.usd_per_1m_tokens or math.inf, c.key),
    )
    rows = [("✓" if c.passes else "✓ beyond quota" if c.meets_slo else "✗", c) for c in ordered]
    return (
        f'<section class="card"><details><summary>All {len(rows)} configurations evaluated'
        f"</summary>{_candidate_rows(report, rows, verdicts=True)}</details></section>"
    )


def _footer(report: PlanReport) -> str:
    parts = ["made by inferplane plan"]
    if report.seed is not None:
        parts.append(f"seed {report.seed}")
    if report.elapsed_s is not None:
        parts.append(f"planned in {report.elapsed_s:.1f} s")
    return f"<footer>{' · '.join(parts)}</footer>"


def render_html(result: Mapping[str, Any]) -> str:
    """One self-contained HTML page for a planner result: the verdict, the decision table
    (or the closest candidates when nothing meets the SLOs), the plots of every section
    the result holds, and all configurations. It loads nothing over the network."""
    report = read_result(result)
    drawn = figures(result)
    body = (
        _header(report)
        + _verdict(report)
        + _decision(report)
        + _plot_cards(report, drawn)
        + _all_candidates(report)
        + _footer(report)
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Capacity plan: {_esc(report.name)}</title><style>{_CSS}</style>"
        f"<script>{_BOOT_JS}</script><script>{_plotly_js()}</script></head>"
        f"<body><main>{body}</main>"
        f'<script type="application/json" id="report-figures">{_script_json(drawn)}</script>'
        f"<script>{_DRAW_JS}</script></body></html>\n"
    )
