"""A plan's workload measured from a trace: the twin's trace format or the gateway's usage
export (``inferplane usage export --format events``), read once, streamed.

Average rate over the trace's span; peak rate as the busiest minute; prompt and
output lengths as lognormals fitted to the logs of the observed lengths (median
exp(mean), sigma their standard deviation, clamped at the largest seen); the
classes' shares of the requests. ``growth`` scales the rates, to plan for more
traffic than the trace saw.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferplane.twin import read_trace

__all__ = ["TraceProfile", "profile_trace"]

_PEAK_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class TraceProfile:
    requests: int
    average_rps: float
    peak_rps: float
    prompt_tokens: dict[str, Any]  # a LengthSpec as YAML would give it
    output_tokens: dict[str, Any]
    class_shares: dict[str, float]


class _LogStats:
    """Running mean and variance of log lengths (Welford), and the largest length."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2, self.max = 0, 0.0, 0.0, 1

    def add(self, length: int) -> None:
        x = math.log(length)
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)
        self.max = max(self.max, length)

    def spec(self) -> dict[str, Any]:
        sigma = math.sqrt(self.m2 / self.n) if self.n > 1 else 0.0
        # exp(log(n)) may come back a hair above n: the median of equal lengths is n.
        median = min(math.exp(self.mean), self.max)
        return {"lognormal": {"median": median, "sigma": min(sigma, 10.0), "max": self.max}}


def profile_trace(path: Path, *, growth: float = 1.0) -> TraceProfile:
    """Raises ValueError (TraceError) for an unreadable row or a trace of one instant."""
    prompts, outputs = _LogStats(), _LogStats()
    classes: Counter[str] = Counter()
    first = last = None
    window_start, in_window, busiest = 0.0, 0, 0
    for a in read_trace(path):
        if first is None:
            first = window_start = a.time
        last = a.time
        if a.time >= window_start + _PEAK_WINDOW_S:
            # Straight to the window of this arrival (the minutes between saw none): a
            # gap of years in a trace is one step, not one per minute.
            busiest = max(busiest, in_window)
            windows = max(1, math.floor((a.time - window_start) / _PEAK_WINDOW_S))
            window_start, in_window = window_start + windows * _PEAK_WINDOW_S, 0
        in_window += 1
        prompts.add(a.prompt_tokens)
        outputs.add(a.output_tokens)
        classes[a.slo_class] += 1
    if first is None or last is None or prompts.n < 2 or last <= first:
        raise ValueError(f"{path}: a trace needs requests spread over time to plan from")
    span = last - first
    # A trace shorter than the window: its own rate is its busiest.
    peak = max(busiest, in_window) / min(_PEAK_WINDOW_S, span)
    average = prompts.n / span
    return TraceProfile(
        requests=prompts.n,
        average_rps=average * growth,
        peak_rps=max(peak, average) * growth,
        prompt_tokens=prompts.spec(),
        output_tokens=outputs.spec(),
        class_shares={c: n / prompts.n for c, n in sorted(classes.items())},
    )
