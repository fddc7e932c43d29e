"""The capacity planner: the cheapest fleet that meets the SLOs, found on the twin."""

from inferplane.plan._report_html import render_html
from inferplane.plan._report_md import render_markdown
from inferplane.plan._search import search
from inferplane.plan._spec import ClassSlo, GpuOffer, PlanSpec, PlanWorkload, load_plan

__all__ = [
    "ClassSlo",
    "GpuOffer",
    "PlanSpec",
    "PlanWorkload",
    "load_plan",
    "render_html",
    "render_markdown",
    "search",
]
