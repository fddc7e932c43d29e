"""When requests arrive: a renewal process (Poisson or gamma) whose rate follows a shape
over time (diurnal cycles, steps): the YAML spec, the gaps of the unit-rate process and
the rate's integral Lambda with its inverse.

Method: time rescaling. A unit-rate renewal process runs in "operational time" tau and
each of its points is mapped to real time t = Lambda^-1(tau), where Lambda(t) is the
integral of the rate lambda(t). For Poisson this is the exact non-homogeneous Poisson
process; for gamma it is the standard inversion construction of a non-stationary renewal
process (Gerhardt & Nelson, INFORMS J. on Computing 21(4), 2009), which keeps the
burstiness (CV of gaps in operational time) and, because the process is started in
equilibrium, gives E[N(a, b)] = Lambda(b) - Lambda(a) exactly. Thinning would change the
gamma process's CV, which is why it is not used.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag

from inferplane.config import Strict

__all__ = [
    "MAX_DIURNALS",
    "ArrivalProcess",
    "Diurnal",
    "DiurnalShape",
    "GammaArrivals",
    "GammaParams",
    "Intensity",
    "Shape",
    "Step",
    "StepShape",
    "gap_sampler",
]


class GammaParams(Strict):
    # Coefficient of variation of the gaps: 1 is Poisson, above is burstier. Bounded because
    # gamma shapes below 1/400 draw gaps that underflow to 0.
    cv: float = Field(gt=0, le=20)


class GammaArrivals(Strict):
    gamma: GammaParams


ArrivalProcess = Literal["poisson"] | GammaArrivals


class Diurnal(Strict):
    """A sinusoid of mean 1 over its period, peaking at peak_at_s (mod period_s), with
    this peak-to-trough ratio; the stream's rate stays its mean over whole periods."""

    period_s: float = Field(gt=0)
    peak_to_trough: float = Field(ge=1, le=10**6)
    peak_at_s: float = 0.0


class DiurnalShape(Strict):
    kind: ClassVar[str] = "diurnal"
    diurnal: Diurnal


class Step(Strict):
    """The rate times ``factor`` from at_s for duration_s (for ever when omitted); 0 is an
    outage, 3 a spike."""

    at_s: float = Field(ge=0)
    duration_s: float | None = Field(None, gt=0)
    factor: float = Field(ge=0, le=10**6)


class StepShape(Strict):
    kind: ClassVar[str] = "step"
    step: Step


def _shape_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return next(iter(value)) if len(value) == 1 else None
    return getattr(value, "kind", None)


Shape = Annotated[
    Annotated[DiurnalShape, Tag("diurnal")] | Annotated[StepShape, Tag("step")],
    Discriminator(
        _shape_kind,
        custom_error_type="shape_spec",
        custom_error_message="expected {diurnal: {...}} or {step: {...}}",
    ),
]

MAX_DIURNALS = 4  # their product expands into 2**n cosine terms
_TOLERANCE_S = 1e-12  # how far an arrival time may be from the exact Lambda^-1(tau)


@dataclass(frozen=True, slots=True)
class _Segment:
    start: float
    end: float
    factor: float  # product of the steps in force
    g_start: float  # G(start)
    cum_start: float  # Lambda(start)
    cum_end: float  # Lambda(end); inf for an open last segment with factor > 0


class Intensity:
    """lambda(t) = rate x steps(t) x g(t), with g the product of the diurnal shapes written
    as a0 + sum A cos(W t + P); Lambda and its inverse in closed form or by safeguarded
    Newton. ``time_at`` must be called with non-decreasing tau (one instance per stream)."""

    def __init__(self, rate: float, shapes: Sequence[DiurnalShape | StepShape]) -> None:
        assert rate > 0
        diurnals = [s.diurnal for s in shapes if isinstance(s, DiurnalShape)]
        steps = [s.step for s in shapes if isinstance(s, StepShape)]
        if len(diurnals) > MAX_DIURNALS:
            raise ValueError(f"at most {MAX_DIURNALS} diurnal shapes per stream")
        terms: list[tuple[float, float, float]] = [(1.0, 0.0, 0.0)]
        self._gmin = self._gmax = 1.0
        for d in diurnals:
            a = (d.peak_to_trough - 1) / (d.peak_to_trough + 1)
            w = 2 * math.pi / d.period_s
            p = -w * d.peak_at_s
            # (sum A cos(Wt+P)) x (1 + a cos(wt+p)), by cos x cos y = (cos(x+y) + cos(x-y))/2
            product = list(terms)
            for amp, big_w, big_p in terms:
                product.append((amp * a / 2, big_w + w, big_p + p))
                product.append((amp * a / 2, big_w - w, big_p - p))
            terms = product
            self._gmin *= 1 - a
            self._gmax *= 1 + a
        self._a0 = 0.0
        merged: dict[tuple[float, float], float] = {}
        for amp, big_w, big_p in terms:
            if amp == 0:  # a flat "diurnal" (peak_to_trough 1)
                continue
            if abs(big_w) < 1e-12:
                self._a0 += amp * math.cos(big_p)
            elif big_w < 0:  # cos is even: the same term as (amp, -W, -P)
                merged[(-big_w, -big_p)] = merged.get((-big_w, -big_p), 0.0) + amp
            else:
                merged[(big_w, big_p)] = merged.get((big_w, big_p), 0.0) + amp
        # (A, W, P, A/W) for g and G; G's constant is subtracted once.
        self._terms = [(a, w, p, a / w) for (w, p), a in merged.items()]
        self._g0 = sum(c * math.sin(p) for _, _, p, c in self._terms)
        # Newton from a point within |e| of the root lands within curv * e**2 of it, and
        # |e| <= |step| * gmax / gmin: so a step with curv * step**2 below _TOLERANCE_S is
        # accepted without evaluating G again (g' <= sum |A W|, g >= gmin).
        bend = sum(abs(a * w) for a, w, _, _ in self._terms) / (2 * self._gmin)
        self._curv = bend * (self._gmax / self._gmin) ** 2
        self.rate = rate
        self._segments = self._cut(steps)
        # The rate is ``rate`` itself at every t (t = tau / rate, no inversion needed):
        # no diurnal terms, and no step in force, or only ones whose factors multiply to 1
        # (a step from t = 0 for ever leaves one segment, but at its own factor).
        self.homogeneous = (
            not self._terms and len(self._segments) == 1 and self._segments[0].factor == 1.0
        )
        self._k = -1  # the segment of the last answer; -1 before the first
        self._last: tuple[float, float, float] = (0.0, 0.0, 1.0)  # t, G(t), g(t)

    def _cut(self, steps: Sequence[Step]) -> list[_Segment]:
        edges = {0.0}
        for s in steps:
            edges.add(s.at_s)
            if s.duration_s is not None:
                edges.add(s.at_s + s.duration_s)
        bounds = sorted(edges)
        segments = []
        cum = 0.0
        for i, start in enumerate(bounds):
            end = bounds[i + 1] if i + 1 < len(bounds) else math.inf
            factor = 1.0
            for s in steps:
                if s.at_s <= start and (s.duration_s is None or start < s.at_s + s.duration_s):
                    factor *= s.factor
            g_start = self._g_integral(start)
            if end == math.inf:
                cum_end = math.inf if factor > 0 else cum
            else:
                cum_end = cum + self.rate * factor * (self._g_integral(end) - g_start)
            segments.append(_Segment(start, end, factor, g_start, cum, cum_end))
            cum = cum_end
        return segments

    def _g(self, t: float) -> float:
        cos = math.cos
        return self._a0 + sum(a * cos(w * t + p) for a, w, p, _ in self._terms)

    def _g_integral(self, t: float) -> float:
        """G(t), the integral of g from 0 to t."""
        sin = math.sin
        return self._a0 * t + sum(c * sin(w * t + p) for _, w, p, c in self._terms) - self._g0

    def rate_at(self, t: float) -> float:
        """lambda(t), requests per second at time t."""
        factor = next(s.factor for s in reversed(self._segments) if s.start <= t)
        return self.rate * factor * self._g(t)

    def cumulative(self, t: float) -> float:
        """Lambda(t): the expected number of arrivals in [0, t)."""
        seg = next(s for s in reversed(self._segments) if s.start <= t)
        return seg.cum_start + self.rate * seg.factor * (self._g_integral(t) - seg.g_start)

    def time_at(self, tau: float) -> float:
        """The t with Lambda(t) = tau (inf when the rate stays 0 from some time on)."""
        segments = self._segments
        k = max(self._k, 0)
        while tau >= segments[k].cum_end:
            k += 1
            if k == len(segments):
                self._k = k - 1
                return math.inf
        seg = segments[k]
        need = (tau - seg.cum_start) / (self.rate * seg.factor)  # G(t) - G(seg.start)
        if not self._terms:
            self._k = k
            return seg.start + need / self._a0
        if k != self._k:  # Newton starts from the segment's start
            self._k = k
            self._last = (seg.start, seg.g_start, self._g(seg.start))
        return self._solve(seg.g_start + need, seg.end)

    def _solve(self, target: float, end: float) -> float:
        """G(t) = target for t in [last t, end], by Newton from the last answer (one
        evaluation of G and g when arrivals are dense), bisecting when a step leaves the
        bracket that gmin <= g <= gmax gives."""
        t0, big_g0, g0 = self._last
        d = max(target - big_g0, 0.0)
        lo, hi = t0 + d / self._gmax, min(end, t0 + d / self._gmin)
        t = min(max(t0 + d / g0, lo), hi)
        terms, sin, cos, a0, base = self._terms, math.sin, math.cos, self._a0, self._g0
        for _ in range(200):
            big_g, g = a0 * t - base, a0
            for a, w, p, c in terms:
                x = w * t + p
                big_g += c * sin(x)
                g += a * cos(x)
            step = (big_g - target) / g
            if self._curv * step * step <= _TOLERANCE_S and lo <= t - step <= hi:
                t -= step
                break
            if step > 0:
                hi = t
            else:
                lo = t
            nxt = t - step
            t = nxt if lo < nxt < hi else 0.5 * (lo + hi)
            if hi - lo <= _TOLERANCE_S:
                break
        self._last = (t, target, g)
        return t


def gap_sampler(process: ArrivalProcess, rng: random.Random) -> tuple[float, Callable[[], float]]:
    """The first point of a unit-rate renewal process started in equilibrium, and a
    function drawing the following gaps (mean 1)."""
    if process == "poisson":  # memoryless: the equilibrium start is an ordinary gap
        return rng.expovariate(1.0), partial(rng.expovariate, 1.0)
    assert isinstance(process, GammaArrivals)
    shape, scale = 1.0 / process.gamma.cv**2, process.gamma.cv**2
    # Equilibrium residual: a length-biased gap (gamma of shape k + 1) cut at a uniform point.
    first = rng.random() * rng.gammavariate(shape + 1.0, scale)
    return first, partial(rng.gammavariate, shape, scale)
