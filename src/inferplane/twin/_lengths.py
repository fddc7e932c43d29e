"""Token lengths of generated requests: fixed, uniform, lognormal or a preset fitted to a
public dataset, as a YAML spec and as fast samplers (one call per request)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from inferplane.config import Strict

__all__ = [
    "PRESETS",
    "FixedLength",
    "LengthPreset",
    "LengthSpec",
    "LogNormalFit",
    "LogNormalLength",
    "PresetLength",
    "Role",
    "UniformLength",
    "length_sampler",
]

Role = Literal["prompt", "output"]
Sampler = Callable[[random.Random], int]


@dataclass(frozen=True, slots=True)
class LogNormalFit:
    """exp(N(ln median, sigma²)), rounded to whole tokens and clamped to [1, max]."""

    median: float
    sigma: float
    max: int | None = None


def _through(median: float, quantile: float, p: float, max: int | None = None) -> LogNormalFit:
    """The lognormal with this median whose p-quantile is ``quantile``: it matches both
    published figures exactly (and nothing else of the dataset)."""
    return LogNormalFit(median, math.log(quantile / median) / NormalDist().inv_cdf(p), max)


@dataclass(frozen=True, slots=True)
class LengthPreset:
    """Prompt and output lengths of a public dataset; None where no fit was published."""

    prompt: LogNormalFit | None
    output: LogNormalFit | None
    source: str  # dataset, paper or repository, and the statistics fitted


PRESETS: dict[str, LengthPreset] = {
    # Azure LLM inference trace 2023, conversation service: AzurePublicDataset
    # data/AzureLLMInferenceTrace_conv.csv (19,366 requests), described in Patel et al.,
    # "Splitwise", ISCA 2024. GeneratedTokens P50 = 129 and P95 = 451 over the whole file.
    # No prompt fit: we found no published dispersion of its ContextTokens.
    "azure-conversation-2023": LengthPreset(
        prompt=None,
        output=_through(129, 451, 0.95),
        source=(
            "Azure LLM inference trace 2023, conversation "
            "(https://github.com/Azure/AzurePublicDataset, AzureLLMInferenceTrace_conv.csv; "
            "Patel et al., Splitwise, ISCA 2024): GeneratedTokens P50 129, P95 451"
        ),
    ),
    # TraceLab coding-agent traces (Zhu et al., "TraceLab: Characterizing Coding Agent
    # Workloads for LLM Serving", arXiv 2606.30560; github.com/uw-syfi/TraceLab), table
    # token_length_distribution, per LLM step of Claude Code. "prompt" is the step's newly
    # appended (uncached) input: P50 857, P90 5,342, P99 232,206; the cached context it
    # extends (P50 126,180 tokens) is what `prefix` models. Output: P50 252, P90 1,671,
    # P99 6,571. Fitted through P50 and P90; max is the published P99.
    "tracelab-claude-code": LengthPreset(
        prompt=_through(857, 5342, 0.90, max=232_206),
        output=_through(252, 1671, 0.90, max=6_571),
        source=(
            "TraceLab coding-agent traces, Claude Code (Zhu et al., arXiv 2606.30560, "
            "https://github.com/uw-syfi/TraceLab): appended input P50 857, P90 5342, "
            "P99 232206; output P50 252, P90 1671, P99 6571 tokens per step"
        ),
    ),
    # The same table for Codex steps: appended input P50 886, P90 8,310, P99 121,009;
    # output P50 184, P90 939, P99 3,508.
    "tracelab-codex": LengthPreset(
        prompt=_through(886, 8310, 0.90, max=121_009),
        output=_through(184, 939, 0.90, max=3_508),
        source=(
            "TraceLab coding-agent traces, Codex (Zhu et al., arXiv 2606.30560, "
            "https://github.com/uw-syfi/TraceLab): appended input P50 886, P90 8310, "
            "P99 121009; output P50 184, P90 939, P99 3508 tokens per step"
        ),
    ),
}


class FixedLength(Strict):
    kind: ClassVar[str] = "fixed"
    fixed: int = Field(ge=1)


class UniformLength(Strict):
    """Whole numbers from lo to hi, both included, equally likely."""

    kind: ClassVar[str] = "uniform"
    uniform: tuple[int, int]

    @model_validator(mode="after")
    def _ordered(self) -> UniformLength:
        lo, hi = self.uniform
        if not 1 <= lo <= hi:
            raise ValueError(f"uniform needs 1 <= lo <= hi, got [{lo}, {hi}]")
        return self


class LogNormalParams(Strict):
    median: float = Field(gt=0, le=10**7)
    sigma: float = Field(ge=0, le=10)
    max: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _max_above_median(self) -> LogNormalParams:
        if self.max is not None and self.max < self.median:
            raise ValueError(f"max ({self.max}) must not be below the median ({self.median})")
        return self


class LogNormalLength(Strict):
    kind: ClassVar[str] = "lognormal"
    lognormal: LogNormalParams


class PresetLength(Strict):
    """A fit from ``PRESETS``; ``max`` replaces the preset's own clamp."""

    kind: ClassVar[str] = "preset"
    preset: str
    max: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _known(self) -> PresetLength:
        if self.preset not in PRESETS:
            raise ValueError(
                f"unknown preset {self.preset!r}; known presets: {', '.join(sorted(PRESETS))}"
            )
        return self

    def fit(self, role: Role) -> LogNormalFit | None:
        preset = PRESETS[self.preset]
        fit = preset.prompt if role == "prompt" else preset.output
        if fit is None or self.max is None:
            return fit
        return LogNormalFit(fit.median, fit.sigma, self.max)


def _length_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kinds = [k for k in ("fixed", "uniform", "lognormal", "preset") if k in value]
        return kinds[0] if len(kinds) == 1 else None
    return getattr(value, "kind", None)


LengthSpec = Annotated[
    Annotated[FixedLength, Tag("fixed")]
    | Annotated[UniformLength, Tag("uniform")]
    | Annotated[LogNormalLength, Tag("lognormal")]
    | Annotated[PresetLength, Tag("preset")],
    Discriminator(
        _length_kind,
        custom_error_type="length_spec",
        custom_error_message=(
            "expected one of {fixed: N}, {uniform: [lo, hi]}, "
            "{lognormal: {median, sigma, max}} or {preset: NAME}"
        ),
    ),
]


def _presets_with(role: Role) -> list[str]:
    return sorted(name for name, p in PRESETS.items() if getattr(p, role) is not None)


def length_sampler(spec: LengthSpec, role: Role) -> Sampler:
    """A function drawing one length (>= 1) from ``random.Random``; ``role`` picks a preset's
    prompt or output fit (raises ValueError where the preset has none)."""
    if isinstance(spec, FixedLength):
        n = spec.fixed
        return lambda rng: n
    if isinstance(spec, UniformLength):
        lo, span = spec.uniform[0], spec.uniform[1] - spec.uniform[0] + 1
        return lambda rng: lo + int(rng.random() * span)
    if isinstance(spec, LogNormalLength):
        fit = LogNormalFit(spec.lognormal.median, spec.lognormal.sigma, spec.lognormal.max)
    else:
        found = spec.fit(role)
        if found is None:
            raise ValueError(
                f"preset {spec.preset!r} has no {role} length fit; presets with one: "
                f"{', '.join(_presets_with(role)) or 'none'}"
            )
        fit = found
    return _lognormal(fit)


def _lognormal(fit: LogNormalFit) -> Sampler:
    mu, sigma = math.log(fit.median), fit.sigma
    top = fit.max if fit.max is not None else 2**62  # float -> int conversion stays finite
    exp = math.exp

    def draw(rng: random.Random) -> int:
        x = mu + sigma * rng.gauss()
        if x > 43.0:  # e**43 exceeds any clamp; keeps exp() from overflowing
            return top
        n = int(exp(x) + 0.5)
        return 1 if n < 1 else (top if n > top else n)

    return draw
