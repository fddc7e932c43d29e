"""The plan's plots as plotly figures: plain JSON dicts that plotly.js draws in the page.

Each builder reads one section of the result and returns ``{"data", "layout"}``, or None
when the result lacks that section. Names from the user's YAML are HTML-escaped here too:
plotly.js splits its text on tags *before* it decodes entities, so an escaped
``<script>`` is drawn as literal text and never parsed as markup.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
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

__all__ = ["FIGURE_IDS", "cost_bars", "figures"]

# Every plot the page can hold, in page order; a plot whose data is absent is left out.
FIGURE_IDS = ("fig-curves", "fig-spike-replicas", "fig-spike-slo", "fig-economics", "fig-cost")

# Okabe-Ito's colour-blind-safe palette, less its red: red means "breaks the SLO".
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#8C6D31", "#7F7F7F")
_RED, _GREEN, _GREY, _INK = "#C0392B", "#1E8449", "#95A5A6", "#1F2933"
_DASH = {1: "solid", 2: "dash", 4: "dot", 8: "dashdot"}
_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "pentagon", "hexagon")
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# The most bars the cost chart draws: past that a bar chart stops being readable.
_MAX_BARS = 24


def _esc(text: str) -> str:
    return escape(text, quote=True)


def _finite(value: Any) -> Any:
    """``value`` with non-finite numbers as None: JSON has no infinity, plotly draws a gap."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _layout(x_title: str, y_title: str, *, height: int = 380) -> dict[str, Any]:
    axis = {"gridcolor": "#E4E7EB", "zerolinecolor": "#CBD2D9", "linecolor": "#CBD2D9"}
    return {
        "height": height,
        "margin": {"l": 70, "r": 20, "t": 40, "b": 100},
        "font": {"family": _FONT, "size": 12, "color": _INK},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "#FFFFFF",
        "xaxis": {**axis, "title": {"text": x_title}},
        "yaxis": {**axis, "title": {"text": y_title}},
        # At the foot of the figure, under the x axis title: above the plot it would
        # collide with plotly's toolbar.
        "legend": {"orientation": "h", "x": 0, "y": 0, "yref": "container", "yanchor": "bottom"},
        "hoverlabel": {"namelength": -1},
    }


def _mark_x(layout: dict[str, Any], x: float, text: str, colour: str) -> None:
    """A labelled vertical line at ``x``; the label sits inside the plot, clear of the
    legend and the toolbar above it."""
    line = {"color": colour, "dash": "dot", "width": 2}
    layout.setdefault("shapes", []).append(
        {"type": "line", "xref": "x", "yref": "paper", "x0": x, "x1": x, "y0": 0, "y1": 1}
        | {"line": line}
    )
    layout.setdefault("annotations", []).append(
        {"x": x, "xref": "x", "y": 1, "yref": "paper", "xanchor": "left", "yanchor": "top"}
        | {"xshift": 4, "showarrow": False, "text": text, "font": {"color": colour}}
        | {"bgcolor": "rgba(255,255,255,0.85)"}
    )


def _colours(report: PlanReport) -> dict[str, str]:
    return {gpu: _PALETTE[i % len(_PALETTE)] for i, gpu in enumerate(report.gpu_types())}


def _curve_order(report: PlanReport) -> list[str]:
    """The decision table's configurations first, so their curves are drawn on top."""
    first = [c.key for _, c in report.decision_rows() if c.key in report.curves]
    return first + sorted(key for key in report.curves if key not in first)


def _curves_figure(report: PlanReport) -> dict[str, Any] | None:
    if not any(report.curves.values()):
        return None
    by_key = {c.key: c for c in [*report.candidates, *report.closest]}
    if report.best is not None:
        by_key[report.best.key] = report.best
    colours = _colours(report)
    slo = report.ttft_slo()
    data: list[dict[str, Any]] = []
    breaks: tuple[list[float], list[float | None], list[str]] = ([], [], [])
    latencies = []
    for number, key in enumerate(_curve_order(report)):
        points = report.curves[key]
        if not points:
            continue
        candidate = by_key.get(key)
        colour = colours.get(candidate.gpu, _INK) if candidate else _INK
        dash = _DASH.get(candidate.tp or 1, "longdash") if candidate else "solid"
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": _esc(key),
                "legendgroup": _esc(key),
                "x": [p.utilisation for p in points],
                "y": [p.ttft_p99_s for p in points],
                "customdata": [p.load_rps for p in points],
                "line": {"color": colour, "dash": dash, "width": 2},
                # Same GPU and TP share colour and dash: the symbol tells them apart.
                "marker": {"size": 6, "color": colour, "symbol": _SYMBOLS[number % len(_SYMBOLS)]},
                "hovertemplate": "%{fullData.name}<br>utilisation %{x:.0%}"
                "<br>load %{customdata:.1f} req/s<br>P99 TTFT %{y:.3f} s<extra></extra>",
            }
        )
        latencies += [p.ttft_p99_s for p in points if p.ttft_p99_s and math.isfinite(p.ttft_p99_s)]
        broken = next((p for p in points if not p.meets_slo), None)
        if broken is not None:
            y = broken.ttft_p99_s
            # An unbounded P99 has no place on the axis: mark the break on the SLO line.
            breaks[0].append(broken.utilisation)
            breaks[1].append(y if y is not None and math.isfinite(y) else (slo[1] if slo else None))
            breaks[2].append(_esc(key))
    if breaks[0]:
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "P99 breaks the SLO",
                "x": breaks[0],
                "y": breaks[1],
                "text": breaks[2],
                "marker": {"symbol": "x", "size": 12, "color": _RED, "line": {"width": 1}},
                "hovertemplate": "%{text}: P99 breaks the SLO at %{x:.0%}<extra></extra>",
            }
        )
    xs = [p.utilisation for points in report.curves.values() for p in points]
    if slo is not None:
        name, target = slo
        latencies.append(target)
        # A trace, not a layout shape: it stays right on a log axis and gets a legend entry.
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": _esc(f"SLO: {name} P99 TTFT {seconds(target)}"),
                "x": [min(xs), max(xs)],
                "y": [target, target],
                "line": {"color": _RED, "dash": "dash", "width": 2},
                "hoverinfo": "name",
            }
        )
    layout = _layout("GPU utilisation at the offered load", "P99 TTFT (s)", height=480)
    layout["xaxis"]["tickformat"] = ".0%"
    # P99 grows without bound near saturation: a log axis keeps the knee readable.
    if latencies and max(latencies) > 20 * min(latencies):
        layout["yaxis"] |= {"type": "log", "dtick": 1}  # a tick per decade
    target_u = report.utilisation_target
    if target_u is not None and math.isfinite(target_u):
        _mark_x(layout, target_u, f"utilisation target {percent(target_u)}", _GREEN)
    return {"data": data, "layout": layout}


_RUNS = (
    ("with_autoscaling", "with autoscaling", _GREEN),
    ("without_autoscaling", "without", _GREY),
)


def _spike_replicas_figure(report: PlanReport) -> dict[str, Any] | None:
    data = []
    most = 0
    for name, label, colour in _RUNS:
        run = report.spike_test.get(name)
        if run is None or not run.replicas_over_time:
            continue
        most = max([most, *(n for _, n in run.replicas_over_time)])
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": label,
                "x": [t for t, _ in run.replicas_over_time],
                "y": [n for _, n in run.replicas_over_time],
                "line": {"shape": "hv", "color": colour, "width": 3}
                | ({"dash": "dash"} if name == "without_autoscaling" else {}),
                "hovertemplate": "t = %{x:.0f} s: %{y} replicas<extra>" + label + "</extra>",
            }
        )
    if not data:
        return None
    layout = _layout("time into the spike test (s)", "replicas serving", height=330)
    layout["yaxis"]["rangemode"] = "tozero"
    if most <= 12:
        layout["yaxis"]["dtick"] = 1  # whole replicas, not 2.5 of them
    return {"data": data, "layout": layout}


def _spike_slo_figure(report: PlanReport) -> dict[str, Any] | None:
    runs = [(label, colour, report.spike_test[name]) for name, label, colour in _RUNS
            if name in report.spike_test]  # fmt: skip
    if not runs:
        return None
    labels, colours = [label for label, _, _ in runs], [colour for _, colour, _ in runs]
    ttft = [run.ttft_p99_s for _, _, run in runs]
    attained = [run.attainment for _, _, run in runs]
    data = [
        {
            "type": "bar",
            "x": labels,
            "y": ttft,
            "text": [seconds(v) for v in ttft],
            "textposition": "auto",
            "marker": {"color": colours},
            "hovertemplate": "%{x}: P99 TTFT %{y:.3f} s<extra></extra>",
        },
        {
            "type": "bar",
            "x": labels,
            "y": attained,
            "xaxis": "x2",
            "yaxis": "y2",
            "text": [percent(v, 1) for v in attained],
            "textposition": "auto",
            "marker": {"color": colours},
            "hovertemplate": "%{x}: attainment %{y:.1%}<extra></extra>",
        },
    ]
    layout = _layout("", "P99 TTFT (s)", height=280)
    layout["showlegend"] = False
    layout["margin"]["b"] = 40
    layout["xaxis"]["domain"] = [0, 0.44]
    layout["xaxis2"] = {"domain": [0.58, 1], "anchor": "y2"}
    floor = min([v for v in attained if v is not None] + [report.min_attainment() or 1, 0.9])
    layout["yaxis2"] = {
        **layout["yaxis"],
        "anchor": "x2",
        "title": {"text": "SLO attainment"},
        "tickformat": ".0%",
        "range": [max(0.0, floor - 0.05), 1.0],
    }
    shapes = []
    if (slo := report.ttft_slo()) is not None:
        shapes.append(("x domain", "y", slo[1]))
    if (minimum := report.min_attainment()) is not None:
        shapes.append(("x2 domain", "y2", minimum))
    layout["shapes"] = [
        {"type": "line", "xref": xref, "yref": yref, "x0": 0, "x1": 1, "y0": y, "y1": y}
        | {"line": {"color": _RED, "dash": "dash", "width": 2}}
        for xref, yref, y in shapes
    ]
    return {"data": data, "layout": layout}


def _economics_figure(report: PlanReport) -> dict[str, Any] | None:
    economics = report.cloud_vs_owned
    if economics is None:
        return None
    months = economics.months
    data: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": name,
            "x": months[: len(values)],
            "y": values[: len(months)],
            "line": {"color": colour, "width": 3},
            "hovertemplate": "month %{x}: $%{y:,.0f}<extra>" + name + "</extra>",
        }
        for name, colour, values in (
            ("cloud (cumulative)", _PALETTE[0], economics.cloud_cumulative_usd),
            ("owned (cumulative)", _PALETTE[1], economics.owned_cumulative_usd),
        )
        if values
    ]
    if not data:
        return None
    layout = _layout("month", "cumulative cost (USD)", height=400)
    layout["yaxis"]["tickprefix"] = "$"
    layout["yaxis"]["rangemode"] = "tozero"
    layout["hovermode"] = "x unified"
    month = economics.break_even_month
    if month is not None and month in months:
        at = months.index(month)
        owned = economics.owned_cumulative_usd
        if at < len(owned) and owned[at] is not None:
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "name": f"break-even: month {month}",
                    "x": [month],
                    "y": [owned[at]],
                    "marker": {"symbol": "star", "size": 16, "color": _RED},
                    "hovertemplate": "break-even in month %{x}<extra></extra>",
                }
            )
        _mark_x(layout, month, f"break-even: month {month}", _RED)
    return {"data": data, "layout": layout}


def cost_bars(report: PlanReport) -> list[Candidate]:
    """The configurations worth a bar: the cheapest that meet the SLOs and can be had,
    else the closest."""
    pool = [c for c in report.candidates if c.passes] or list(report.closest)
    priced = sorted(
        (c for c in pool if c.usd_per_1m_tokens is not None and math.isfinite(c.usd_per_1m_tokens)),
        key=lambda c: (c.usd_per_1m_tokens, c.key),
    )
    return priced[:_MAX_BARS]


def _cost_figure(report: PlanReport) -> dict[str, Any] | None:
    bars = cost_bars(report)
    if not bars:
        return None
    best = report.best.key if report.best else None
    colours = _colours(report)
    data = []
    for gpu in report.gpu_types():
        mine = [c for c in bars if c.gpu == gpu]
        if not mine:
            continue
        data.append(
            {
                "type": "bar",
                "orientation": "h",
                "name": _esc(gpu),
                "y": [_esc(c.key) for c in mine],
                "x": [c.usd_per_1m_tokens for c in mine],
                "text": [
                    usd(c.usd_per_1m_tokens) + (" ★ best" if c.key == best else "") for c in mine
                ],
                "textposition": "outside",
                "customdata": [
                    [count(c.gpus), usd(c.usd_per_request), usd(c.usd_per_hour.get("on_demand"))]
                    for c in mine
                ],
                "marker": {
                    "color": colours[gpu],
                    "line": {"color": _INK, "width": [2.5 if c.key == best else 0 for c in mine]},
                },
                "hovertemplate": "%{y}<br>%{text} per 1M tokens<br>%{customdata[1]} per request"
                "<br>%{customdata[0]} GPUs, %{customdata[2]}/h on demand<extra></extra>",
            }
        )
    layout = _layout("$ per 1M tokens (on demand)", "", height=160 + 26 * len(bars))
    layout["margin"]["l"] = 160
    layout["xaxis"]["tickprefix"] = "$"
    layout["xaxis"]["rangemode"] = "tozero"
    # Room on the right for the outside labels of the longest bar.
    top = max(c.usd_per_1m_tokens or 0.0 for c in bars)
    layout["xaxis"]["range"] = [0, top * 1.3]
    layout["yaxis"] |= {
        "categoryorder": "array",
        "categoryarray": [_esc(c.key) for c in bars],
        "autorange": "reversed",
    }
    layout["barmode"] = "overlay"
    return {"data": data, "layout": layout}


def figures(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The plotly figures (``{"data": [...], "layout": {...}}``) of a result by element id,
    in page order, JSON-ready (no infinities); the ones whose section the result lacks are
    left out."""
    report = read_result(result)
    built = {
        "fig-curves": _curves_figure(report),
        "fig-spike-replicas": _spike_replicas_figure(report),
        "fig-spike-slo": _spike_slo_figure(report),
        "fig-economics": _economics_figure(report),
        "fig-cost": _cost_figure(report),
    }
    assert tuple(built) == FIGURE_IDS
    return {key: _finite(figure) for key, figure in built.items() if figure is not None}
