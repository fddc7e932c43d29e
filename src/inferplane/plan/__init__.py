"""The capacity planner: the cheapest fleet that meets the SLOs, found on the twin."""

from inferplane.plan._search import search
from inferplane.plan._spec import ClassSlo, GpuOffer, PlanSpec, PlanWorkload, load_plan

__all__ = ["ClassSlo", "GpuOffer", "PlanSpec", "PlanWorkload", "load_plan", "search"]
