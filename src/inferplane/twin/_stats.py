"""What a twin run measured, kept in constant memory whatever the number of requests.

Latencies go into DDSketch quantile sketches (1% relative accuracy, mergeable)
per (SLO class, tenant) pair; views per class, per tenant and in total are
merged from them at the end, so recording a request costs one sketch insert
per latency and not one per view.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch

__all__ = ["Cell", "Stats", "Totals"]

_ACCURACY = 0.01
QUANTILES = (0.5, 0.9, 0.99)
LATENCIES = ("ttft", "tpot", "e2e", "queue")


def _sketch() -> DDSketch:
    return DDSketch(relative_accuracy=_ACCURACY)


@dataclass(slots=True)
class Totals:
    """Counts of one view (a class, a tenant, everything)."""

    arrived: int = 0
    completed: int = 0
    met_slo: int = 0
    failed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, other: Totals) -> None:
        self.arrived += other.arrived
        self.completed += other.completed
        self.met_slo += other.met_slo
        self.failed += other.failed
        self.rejected.update(other.rejected)
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens


@dataclass(slots=True)
class Cell:
    """One (class, tenant) pair: its counts and latency sketches."""

    totals: Totals = field(default_factory=Totals)
    sketches: dict[str, DDSketch] = field(
        default_factory=lambda: {name: _sketch() for name in LATENCIES}
    )

    def merge(self, other: Cell) -> None:
        self.totals.add(other.totals)
        for name, sketch in other.sketches.items():
            if sketch.count:
                self.sketches[name].merge(sketch)


class Stats:
    def __init__(self) -> None:
        self.cells: dict[tuple[str, str], Cell] = {}

    def cell(self, slo_class: str, tenant: str) -> Cell:
        key = (slo_class, tenant)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell()
        return cell

    def view(self, by: str) -> dict[str, Cell]:
        """Cells merged by ``"class"``, ``"tenant"`` or ``"all"`` (one entry, ``"all"``)."""
        merged: dict[str, Cell] = {}
        for (slo_class, tenant), cell in sorted(self.cells.items()):
            name = {"class": slo_class, "tenant": tenant}.get(by, "all")
            merged.setdefault(name, Cell()).merge(cell)
        return merged


def summarize(cell: Cell, duration_s: float) -> dict[str, Any]:
    """A view as JSON: counts, SLO attainment, goodput and latency quantiles."""
    t = cell.totals
    out: dict[str, Any] = {
        "arrived": t.arrived,
        "completed": t.completed,
        "failed": t.failed,
        "rejected": dict(sorted(t.rejected.items())),
        "slo_met": t.met_slo,
        # Of the requests that arrived: a rejected request missed its SLO too.
        "slo_attainment": t.met_slo / t.arrived if t.arrived else None,
        "goodput_rps": t.met_slo / duration_s if duration_s > 0 else 0.0,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
    }
    for name, sketch in cell.sketches.items():
        out[f"{name}_s"] = {
            f"p{round(q * 100)}": (sketch.get_quantile_value(q) if sketch.count else None)
            for q in QUANTILES
        } | {"mean": sketch.avg if sketch.count else None}
    return out
