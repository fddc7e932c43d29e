"""The plan's reports: Markdown and self-contained HTML, the HTML opened in real Chromium.

The fixture is a planner result built by hand from the result contract, with numbers
shaped like Llama-3.1-8B on H100 / A100 / L40S at TP1 and TP2 and 1 to 16 replicas.
"""

from __future__ import annotations

import copy
import html
import json
import math
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import plotly.graph_objects as go
import pytest

from inferplane.plan._report import read_result, seconds, usd
from inferplane.plan._report_html import render_html
from inferplane.plan._report_md import render_markdown
from inferplane.plan._report_plots import FIGURE_IDS, cost_bars, figures

# GPU: ($/h on demand, reserved, spot), requests/s one replica serves at TP1 and TP2,
# prefill seconds of a typical prompt, seconds per output token, bottleneck when not queueing.
GPUS = {
    "H100": ((3.90, 2.50, 1.80), (9.0, 15.5), 0.060, 0.012, "memory bandwidth"),
    "A100": ((2.40, 1.55, 1.05), (4.6, 7.9), 0.110, 0.020, "memory bandwidth"),
    "L40S": ((1.50, 0.95, 0.62), (2.2, 3.8), 0.160, 0.018, "KV capacity"),
}
PEAK_RPS, AVERAGE_RPS, SPIKE = 30.0, 12.0, 1.5
TOKENS_PER_REQUEST = 1200
OUTPUT_TOKENS = 256


def _ttft(base: float, utilisation: float) -> float:
    # M/M/1-like growth of the wait; unbounded once the fleet saturates.
    return math.inf if utilisation >= 0.97 else base * (1 + 2.5 * utilisation / (1 - utilisation))


def _slos(ttft_s: float) -> dict[str, dict[str, float | None]]:
    return {
        "interactive": {"ttft_p99_s": ttft_s, "e2e_p99_s": 8.0, "min_attainment": 0.99},
        "batch": {"ttft_p99_s": None, "e2e_p99_s": 60.0, "min_attainment": 0.95},
    }


def _candidate(gpu: str, tp: int, replicas: int, slos: dict[str, Any]) -> dict[str, Any]:
    prices, capacity, prefill, tpot, bottleneck = GPUS[gpu]
    u = PEAK_RPS / (replicas * capacity[tp - 1])
    busy = min(u, 1.0)
    ttft = _ttft(prefill / tp, u)
    ttfts = {"interactive": ttft, "batch": 3 * ttft}
    e2e = {name: t + OUTPUT_TOKENS * tpot * (1 + busy) for name, t in ttfts.items()}
    attained = 0.999 if u < 0.7 else max(0.4, 0.999 - (u - 0.7) * 0.9)
    attainment = {"interactive": attained, "batch": min(1.0, attained + 0.01)}
    meets = all(
        (s["ttft_p99_s"] is None or ttfts[name] <= s["ttft_p99_s"])
        and (s["e2e_p99_s"] is None or e2e[name] <= s["e2e_p99_s"])
        and attainment[name] >= s["min_attainment"]
        for name, s in slos.items()
    )
    usd_per_hour = replicas * tp * prices[0]
    if u > 0.85:
        bottleneck, reason = "queueing", f"{u:.0%} busy: requests wait for a free batch slot"
    else:
        reason = {
            "memory bandwidth": f"decode reads 16 GB of weights per step on {gpu}",
            "KV capacity": "48 GB leaves room for 31k tokens of KV cache per replica",
        }[bottleneck]
    return {
        "key": f"{gpu} x TP{tp} x {replicas}",
        "gpu": gpu,
        "tp": tp,
        "replicas": replicas,
        "gpus": tp * replicas,
        "meets_slo": meets,
        "source": "twin" if 0.4 < u < 1.2 else "analytic",
        "ttft_p99_s": {k: (None if math.isinf(v) else v) for k, v in ttfts.items()},
        "e2e_p99_s": {k: (None if math.isinf(v) else v) for k, v in e2e.items()},
        "attainment": attainment,
        "utilisation": busy,
        "usd_per_hour": {
            "on_demand": usd_per_hour,
            "reserved": replicas * tp * prices[1],
            "spot": replicas * tp * prices[2],
        },
        "usd_per_1m_tokens": usd_per_hour / (PEAK_RPS * 3600 * TOKENS_PER_REQUEST / 1e6),
        "usd_per_request": usd_per_hour / (PEAK_RPS * 3600),
        "bottleneck": bottleneck,
        "bottleneck_reason": reason,
    }


def _curve(candidate: dict[str, Any], slo_s: float) -> list[dict[str, Any]]:
    _, capacity, prefill, _, _ = GPUS[candidate["gpu"]]
    total = candidate["replicas"] * capacity[candidate["tp"] - 1]
    points = []
    for step in range(1, 13):
        load = total * step / 10
        u = load / total
        ttft = _ttft(prefill / candidate["tp"], u)
        ttft = ttft if math.isfinite(ttft) else 120.0  # the twin's horizon caps what it sees
        points.append(
            {
                "utilisation": min(u, 1.0),
                "load_rps": load,
                "ttft_p99_s": ttft,
                "meets_slo": ttft <= slo_s,
            }
        )
    return points


def plan_result(*, ttft_slo_s: float = 0.5, model: str = "Llama-3.1-8B-Instruct") -> dict[str, Any]:
    """A planner result as the contract describes it; a ``ttft_slo_s`` nothing can meet
    gives the no-solution shape (best None, closest filled, no spike test or economics)."""
    slos = _slos(ttft_slo_s)
    candidates = [
        _candidate(gpu, tp, replicas, slos)
        for gpu in GPUS
        for tp in (1, 2)
        for replicas in range(1, 17)
    ]
    meeting = sorted(
        (c for c in candidates if c["meets_slo"]), key=lambda c: c["usd_per_1m_tokens"]
    )
    best = meeting[0] if meeting else None
    runner_up = {}
    for c in meeting[1:]:
        runner_up.setdefault(c["gpu"], c)
    closest = []
    if best is None:
        finite = [c for c in candidates if c["ttft_p99_s"]["interactive"] is not None]
        closest = sorted(finite, key=lambda c: c["ttft_p99_s"]["interactive"])[:3]
    shown = [c for c in [best, *runner_up.values(), *closest] if c is not None]
    result: dict[str, Any] = {
        "plan": {
            "name": "chat-assistant-2026",
            "model": model,
            "workload": {"peak_rps": PEAK_RPS, "average_rps": AVERAGE_RPS, "spike_factor": SPIKE},
            "slos": slos,
        },
        "candidates": candidates,
        "best": best,
        "runner_up_by_gpu": runner_up,
        "closest": closest,
        "curves": {c["key"]: _curve(c, ttft_slo_s) for c in shown},
        "utilisation_target": 0.50 if best else None,
        "spike_test": None,
        "cloud_vs_owned": None,
        "seed": 7,
        "elapsed_s": 41.3,
        "skipped": [{"gpu": "L4", "tp": 1, "reason": "one request's KV cache does not fit"}],
    }
    if best is not None:
        result["spike_test"] = {
            "with_autoscaling": {
                "ttft_p99_s": 0.42,
                "attainment": 0.993,
                "replicas_over_time": [
                    [0, 5],
                    [60, 5],
                    [95, 6],
                    [150, 8],
                    [420, 8],
                    [540, 5],
                    [600, 5],
                ],
            },
            "without_autoscaling": {
                "ttft_p99_s": 1.9,
                "attainment": 0.912,
                "replicas_over_time": [[0, 5], [600, 5]],
            },
        }
        monthly_cloud = best["usd_per_hour"]["on_demand"] * 730
        capex, monthly_owned = best["gpus"] * 30_000.0, best["gpus"] * 520.0
        months = list(range(1, 37))
        cloud = [monthly_cloud * m for m in months]
        owned = [capex + monthly_owned * m for m in months]
        result["cloud_vs_owned"] = {
            "months": months,
            "cloud_cumulative_usd": cloud,
            "owned_cumulative_usd": owned,
            "break_even_month": next(
                m for m, c, o in zip(months, cloud, owned, strict=True) if o <= c
            ),
            "break_even_utilisation": 0.41,
        }
    return result


@pytest.fixture(scope="module")
def feasible() -> dict[str, Any]:
    return plan_result()


@pytest.fixture(scope="module")
def infeasible() -> dict[str, Any]:
    return plan_result(ttft_slo_s=0.02)


def test_fixture_has_the_shapes_it_claims(
    feasible: dict[str, Any], infeasible: dict[str, Any]
) -> None:
    assert feasible["best"]["key"] == "H100 x TP1 x 5"
    assert set(feasible["runner_up_by_gpu"]) == {"H100", "A100", "L40S"}
    assert feasible["cloud_vs_owned"]["break_even_month"] == 13
    assert infeasible["best"] is None and len(infeasible["closest"]) == 3


# Markdown


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_markdown_gives_the_decision_and_key_numbers(feasible: dict[str, Any]) -> None:
    markdown = render_markdown(feasible)
    assert markdown.startswith("# Capacity plan: chat-assistant-2026\n")
    decision = _section(markdown, "Decision")
    assert "**Run H100 x TP1 x 5**: 5 GPUs ($19.50/h on demand, $12.50/h reserved" in decision
    assert "$0.150 per 1M tokens, $0.000181 per request, 67% utilisation at peak" in decision
    assert "bottleneck: memory bandwidth (decode reads 16 GB of weights" in decision
    rows = [line for line in decision.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[1] for row in rows[1:]] == [
        "**H100 x TP1 x 5**",
        "**A100 x TP1 x 14**",
        "**H100 x TP1 x 6**",
        "**L40S x TP2 x 13**",
    ]
    assert all(row.count(" | ") == rows[0].count(" | ") for row in rows)
    numbers = _section(markdown, "Key numbers")
    assert "**Utilisation target**: 50%" in numbers
    assert "with autoscaling: P99 TTFT 420 ms, attainment 99.3%, 5→8 replicas" in numbers
    assert "without: P99 TTFT 1.90 s, attainment 91.2%, 5 replicas." in numbers
    assert "owning breaks even in month 13; it pays at or above 41% utilisation" in numbers
    assert "(month 36: cloud $512,460, owned $243,600)" in numbers
    assert markdown.rstrip().endswith("_seed 7 · planned in 41.3 s_")


def test_markdown_no_solution_lists_the_closest_and_what_they_miss(
    infeasible: dict[str, Any],
) -> None:
    markdown = render_markdown(infeasible)
    decision = _section(markdown, "Decision")
    assert "**No configuration meets the SLOs.**" in decision
    rows = [line for line in decision.splitlines() if line.startswith("| #")]
    assert [row.split(" | ")[1] for row in rows] == [
        f"**{c['key']}**" for c in infeasible["closest"]
    ]
    assert rows[0].endswith("| interactive P99 TTFT 40 ms (target 20 ms) |")
    assert "Not evaluated: L4 x TP1: one request's KV cache does not fit." in markdown
    assert "Key numbers" not in markdown  # no spike test or economics without a fleet


def test_markdown_escapes_names_from_the_yaml(feasible: dict[str, Any]) -> None:
    result = copy.deepcopy(feasible)
    result["plan"]["model"] = "<script>alert(1)</script> | [x](javascript:alert(1)) *b*"
    result["best"]["key"] = "H100 | TP1\nx 5"
    markdown = render_markdown(result)
    assert "<script>" not in markdown and "[x](javascript" not in markdown
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt; \\| \\[x\\](javascript:alert(1)) \\*b\\*" in markdown
    )
    decision = _section(markdown, "Decision")
    rows = [line for line in decision.splitlines() if line.startswith("| ")]
    assert "**H100 \\| TP1 x 5**" in rows[1]
    assert all(row.count(" | ") == rows[0].count(" | ") for row in rows)


@pytest.mark.parametrize("result", [{}, {"plan": {"name": "empty"}, "candidates": []}, {"best": 3}])
def test_reports_tolerate_missing_sections(result: dict[str, Any]) -> None:
    assert "# Capacity plan" in render_markdown(result)
    page = render_html(result)
    assert "No configuration meets the SLOs" in page
    assert figures(result) == {}


# HTML structure


def _without_plotly_js(page: str) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", page, flags=re.S)
    plotly_js = max(scripts, key=len)
    assert len(plotly_js) > 1_000_000
    return page.replace(plotly_js, "")


def test_html_is_one_self_contained_file(feasible: dict[str, Any]) -> None:
    page = render_html(feasible)
    assert page.count("plotly.js v") == 1  # inlined once, not once per plot
    rest = _without_plotly_js(page)
    for loads in (
        "<script src",
        "<link",
        "<img",
        "<iframe",
        "@import",
        "url(",
        "http://",
        "https://",
    ):
        assert loads not in rest.lower()


def test_html_figures_are_valid_plotly_and_complete(feasible: dict[str, Any]) -> None:
    drawn = figures(feasible)
    assert tuple(drawn) == FIGURE_IDS
    for figure in drawn.values():
        go.Figure(figure)  # plotly's own validator: raises on a misspelt property

    curves = drawn["fig-curves"]
    assert curves["layout"]["yaxis"]["type"] == "log"
    names = [trace["name"] for trace in curves["data"]]
    assert names[0] == "H100 x TP1 x 5"  # the decision's curves first
    assert "SLO: interactive P99 TTFT 500 ms" in names
    breaks = next(t for t in curves["data"] if t["name"] == "P99 breaks the SLO")
    best_curve = feasible["curves"]["H100 x TP1 x 5"]
    first_miss = next(p for p in best_curve if not p["meets_slo"])
    assert breaks["text"][0] == "H100 x TP1 x 5" and breaks["x"][0] == first_miss["utilisation"]
    assert len(breaks["x"]) == len(feasible["curves"])
    assert curves["layout"]["shapes"][0]["x0"] == 0.5  # the utilisation target

    replicas = drawn["fig-spike-replicas"]["data"]
    assert [t["name"] for t in replicas] == ["with autoscaling", "without"]
    assert max(replicas[0]["y"]) == 8 and replicas[0]["line"]["shape"] == "hv"
    slo_bars = drawn["fig-spike-slo"]
    assert slo_bars["data"][0]["y"] == [0.42, 1.9]
    assert [shape["y0"] for shape in slo_bars["layout"]["shapes"]] == [0.5, 0.99]

    economics = drawn["fig-economics"]
    star = economics["data"][-1]
    assert star["x"] == [13] and economics["layout"]["shapes"][0]["x0"] == 13

    cost = drawn["fig-cost"]
    order = cost["layout"]["yaxis"]["categoryarray"]
    expected = [c.key for c in cost_bars(read_result(feasible))]
    assert order == expected and order[0] == "H100 x TP1 x 5"
    assert sum(len(trace["x"]) for trace in cost["data"]) == len(order)


def test_html_decision_table_and_verdict(feasible: dict[str, Any]) -> None:
    page = render_html(feasible)
    verdict = page.split('id="verdict"', 1)[1].split("</section>", 1)[0]
    assert '<div class="config">H100 x TP1 x 5</div>' in verdict
    assert "<dd>$0.150</dd>" in verdict and "<dd>month 13</dd>" in verdict
    decision = page.split('id="decision"', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr[^>]*><td>([^<]*)</td><td[^>]*><strong>([^<]*)</strong>", decision)
    assert rows == [
        ("Best", "H100 x TP1 x 5"),
        ("Runner-up on A100", "A100 x TP1 x 14"),
        ("Runner-up on H100", "H100 x TP1 x 6"),
        ("Runner-up on L40S", "L40S x TP2 x 13"),
    ]
    assert '<tr class="best"><td>Best</td>' in decision
    assert '<span class="badge b-memory">memory bandwidth</span>' in decision
    assert "All 96 configurations evaluated" in page


def test_html_no_solution_shows_the_closest(infeasible: dict[str, Any]) -> None:
    page = render_html(infeasible)
    assert "No configuration meets the SLOs" in page and "Recommended" not in page
    for candidate in infeasible["closest"]:
        assert f"<li><strong>{candidate['key']}</strong>: misses interactive P99 TTFT " in page
    assert "<h2>Closest candidates</h2>" in page and '<span class="v miss">' in page
    assert tuple(figures(infeasible)) == ("fig-curves", "fig-cost")
    assert "Not evaluated: L4 x TP1: one request&#x27;s KV cache does not fit." in page


def test_html_escapes_names_from_the_yaml(feasible: dict[str, Any]) -> None:
    result = _hostile(feasible)
    page = render_html(result)
    for payload in HOSTILE.values():
        assert payload not in page
    assert "&lt;/script&gt;&lt;script&gt;" in page  # shown as text, escaped
    json_block = page.split('id="report-figures">', 1)[1].split("</script>", 1)[0]
    assert "<" not in json_block and ">" not in json_block
    assert "x domain" in json_block  # the block is the figures, whole
    # Plotly.js parses a few tags in its text; escaped, a name is drawn as written.
    escaped_key = html.escape(HOSTILE["key"])
    drawn = figures(result)
    assert escaped_key in drawn["fig-cost"]["layout"]["yaxis"]["categoryarray"]
    assert escaped_key in [trace["name"] for trace in drawn["fig-curves"]["data"]]


def test_unbounded_latencies_become_gaps_not_invalid_json(feasible: dict[str, Any]) -> None:
    result = copy.deepcopy(feasible)
    result["curves"]["H100 x TP1 x 5"][-1]["ttft_p99_s"] = math.inf
    result["best"]["ttft_p99_s"]["interactive"] = math.inf
    page = render_html(result)
    block = page.split('id="report-figures">', 1)[1].split("</script>", 1)[0]

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in the figure JSON")

    drawn = json.loads(block, parse_constant=refuse)
    assert drawn["fig-curves"]["data"][0]["y"][-1] is None
    assert "unbounded" in render_markdown(result)


# The HTML in a real browser

_PWN = "document.documentElement.setAttribute('data-pwned','{}')"
HOSTILE = {
    "model": f"</script><script>{_PWN.format('model')}</script>",
    "key": f'</script><img src=x onerror="{_PWN.format("key")}">',
    "name": f'"\'><svg onload="{_PWN.format("name")}">',
    "class": f"<script>{_PWN.format('class')}</script>",
}


def _rename_key(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {(new if k == old else k): _rename_key(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename_key(item, old, new) for item in value]
    return value


def _hostile(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with names that would run script if any reached the page unescaped."""
    result = _rename_key(result, "interactive", HOSTILE["class"])
    result["plan"]["model"] = HOSTILE["model"]
    result["plan"]["name"] = HOSTILE["name"]
    victim = (result["best"] or result["closest"][0])["key"]
    for candidate in [*result["candidates"], *result["closest"], result["best"]]:
        if candidate is not None and candidate["key"] == victim:
            candidate["key"] = HOSTILE["key"]
    result["curves"][HOSTILE["key"]] = result["curves"].pop(victim)
    return result


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if (found := shutil.which(name)) is not None:
            return found
    pytest.fail(
        "Chromium is not installed: the report's browser test needs it "
        "(apt-get install chromium, which .ci/run does)"
    )


@dataclass
class Page:
    """What Chromium made of a page: the root element's attributes, each plot's drawing."""

    root: dict[str, str] = field(default_factory=dict)
    main_svgs: dict[str, int] = field(default_factory=dict)
    traces: dict[str, int] = field(default_factory=dict)
    bars: dict[str, int] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # what the page asked of the network


class _DomReader(HTMLParser):
    """Counts, inside each plot's <div id="fig-...">, plotly's SVG roots and drawn traces."""

    VOID: ClassVar[frozenset[str]] = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "wbr"}
    )

    def __init__(self, page: Page) -> None:
        super().__init__()
        self.page = page
        self.stack: list[str | None] = []  # the plot id each open element belongs to

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "html":
            self.page.root = attributes
        plot = attributes.get("id") if attributes.get("id", "").startswith("fig-") else None
        plot = plot or (self.stack[-1] if self.stack else None)
        if plot is not None:
            classes = attributes.get("class", "").split()
            page = self.page
            page.main_svgs[plot] = page.main_svgs.get(plot, 0) + (
                tag == "svg" and "main-svg" in classes
            )
            page.traces[plot] = page.traces.get(plot, 0) + (tag == "g" and "trace" in classes)
            page.bars[plot] = page.bars.get(plot, 0) + (tag == "g" and "point" in classes)
        if tag not in self.VOID:
            self.stack.append(plot)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.stack:
            self.stack.pop()


def _page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for: requests started on behalf of a file:// page
    (Chromium's own update and account checks have no such origin)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in log["events"]
        if event["type"] == start
        and "file://" in event.get("params", {}).get("network_isolation_key", "")
    ]


def open_in_chromium(page_html: str, tmp_path: Path) -> Page:
    """Loads the page in headless Chromium, lets its scripts run, and reads the DOM after."""
    path = tmp_path / "report.html"
    path.write_text(page_html, encoding="utf-8")
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # Nothing answers there: whatever the page (or Chromium) asks of the network fails
        # on loopback, and the net log below shows the page's own requests.
        "--proxy-server=127.0.0.1:9",
        f"--log-net-log={tmp_path / 'netlog.json'}",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2400",
        # Lets timers and promises settle before the DOM is dumped.
        "--virtual-time-budget=10000",
        "--dump-dom",
        path.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    page = Page(
        console=[line for line in done.stderr.splitlines() if ":CONSOLE" in line],
        requests=_page_requests(tmp_path / "netlog.json"),
    )
    _DomReader(page).feed(done.stdout)
    assert page.root, done.stdout[:1000]
    return page


def assert_drawn(page: Page, result: dict[str, Any]) -> None:
    drawn = figures(result)
    assert page.console == []  # no uncaught error, no warning
    assert page.requests == []  # self-contained: nothing fetched
    assert "data-report-error" not in page.root, page.root["data-report-error"]
    assert page.root.get("data-plots-drawn") == str(len(drawn))
    for figure_id, figure in drawn.items():
        assert page.main_svgs.get(figure_id, 0) >= 1, f"{figure_id} has no plotly SVG"
        assert page.traces.get(figure_id, 0) >= len(figure["data"]), f"{figure_id} lacks traces"
    bars = sum(len(trace["x"]) for trace in drawn["fig-cost"]["data"])
    assert page.bars["fig-cost"] == bars


def test_report_renders_its_plots_in_chromium(feasible: dict[str, Any], tmp_path: Path) -> None:
    page = open_in_chromium(render_html(feasible), tmp_path)
    assert_drawn(page, feasible)
    assert page.root["data-plots-drawn"] == str(len(FIGURE_IDS))


def test_hostile_names_render_as_text_in_chromium(
    infeasible: dict[str, Any], tmp_path: Path
) -> None:
    result = _hostile(infeasible)
    page = open_in_chromium(render_html(result), tmp_path)
    assert "data-pwned" not in page.root
    assert_drawn(page, result)


def test_the_browser_check_catches_a_page_that_fails(
    feasible: dict[str, Any], tmp_path: Path
) -> None:
    # Load plotly.js from a CDN instead of inlining it: the load fails (the proxy answers
    # nothing), the drawing script throws, and the check must see all of it.
    page_html = render_html(feasible)
    plotly_js = max(re.findall(r"<script>(.*?)</script>", page_html, flags=re.S), key=len)
    cdn = "http://cdn.example.invalid/plotly.min.js"
    broken = page_html.replace(f"<script>{plotly_js}</script>", f'<script src="{cdn}"></script>')
    page = open_in_chromium(broken, tmp_path)
    assert "Plotly is not defined" in page.root["data-report-error"]
    assert any("Uncaught ReferenceError" in line for line in page.console)
    assert page.requests == [cdn]
    assert "data-plots-drawn" not in page.root and not any(page.main_svgs.values())
    with pytest.raises(AssertionError):
        assert_drawn(page, feasible)


@pytest.mark.parametrize(
    ("value", "dollars", "latency"),
    [
        (None, "—", "—"),
        (math.inf, "∞", "unbounded"),
        (5.21e-05, "$0.0000521", "0 ms"),
        (0.15046, "$0.150", "150 ms"),
        (19.5, "$19.50", "19.50 s"),
        (512_460.0, "$512,460", "512460.00 s"),
    ],
)
def test_number_formats(value: float | None, dollars: str, latency: str) -> None:
    assert usd(value) == dollars
    assert seconds(value) == latency
