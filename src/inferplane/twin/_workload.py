"""The workload of a scenario: request arrivals generated from mixed streams or replayed
from a trace, lazily, in time order, the same for the same seed.

A scenario's ``workload:`` section::

    workload:
      duration_s: 3600
      streams:
        - tenant: acme
          slo_class: interactive
          model: llama-3.1-8b
          workflow: chat
          rate: 20                       # mean requests/s before shaping
          arrivals: {gamma: {cv: 3}}     # or poisson (the default)
          shape:
            - diurnal: {period_s: 86400, peak_to_trough: 4, peak_at_s: 50400}
            - step: {at_s: 1800, duration_s: 600, factor: 3}
          prompt_tokens: {lognormal: {median: 1020, sigma: 1.1, max: 8000}}
          output_tokens: {preset: azure-conversation-2023}
          prefix: {groups: 8, tokens: 1024}
      # or, instead of streams:  trace: traces/monday.csv
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import heapq
import math
import random
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import Field, model_validator

from inferplane.config import Strict
from inferplane.twin._arrivals import (
    MAX_DIURNALS,
    ArrivalProcess,
    DiurnalShape,
    Intensity,
    Shape,
    gap_sampler,
)
from inferplane.twin._lengths import LengthSpec, PresetLength, Role, length_sampler

__all__ = [
    "DEFAULT_SLO_CLASS",
    "Arrival",
    "PrefixSpec",
    "StreamSpec",
    "TraceError",
    "WorkloadSpec",
    "arrivals",
    "read_trace",
]

# Names as config's Name and RunId (twin/ does not import config/).
_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")]
_RunId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
# The class of usage events recorded without one: config's default_slo_class default.
DEFAULT_SLO_CLASS = "interactive"


@dataclasses.dataclass(frozen=True, slots=True)
class Arrival:
    """One request reaching the fleet."""

    time: float  # seconds from the scenario's start
    tenant: str
    slo_class: str
    model: str
    prompt_tokens: int  # the whole prompt, shared prefix included
    output_tokens: int
    workflow: str | None = None
    prefix_key: str | None = None  # requests with the same key share a prompt prefix
    prefix_tokens: int = 0  # leading prompt tokens shared under prefix_key


class PrefixSpec(Strict):
    """Shared prompt prefixes (system prompts, few-shot examples, agent contexts).

    A request takes one of ``groups`` prefixes of ``tokens`` tokens, prepended to the
    prompt drawn from prompt_tokens (so prompt_tokens = tokens + the drawn length, as in
    vLLM's prefix-repetition benchmark). Group i (from 1) is chosen with probability
    proportional to 1 / i**zipf: the default 1 gives a few hot prefixes and a long tail,
    as shared system prompts are; 0 is uniform. ``fraction`` of the requests share one at
    all; ``key`` names the groups (``key/0``...), by default ``stream-N``.
    """

    groups: int = Field(ge=1, le=10**6)
    tokens: int = Field(ge=1, le=10**7)
    zipf: float = Field(1.0, ge=0, le=10)
    fraction: float = Field(1.0, ge=0, le=1)
    key: _Name | None = None


class StreamSpec(Strict):
    tenant: _Name
    slo_class: _Name
    model: _Name
    workflow: _RunId | None = None
    rate: float = Field(gt=0, le=10**7)  # mean requests/s, before shape factors
    arrivals: ArrivalProcess = "poisson"
    shape: list[Shape] = Field(default_factory=list, max_length=64)
    prompt_tokens: LengthSpec
    output_tokens: LengthSpec
    prefix: PrefixSpec | None = None

    @model_validator(mode="after")
    def _presets_fit(self) -> StreamSpec:
        roles: tuple[tuple[Role, LengthSpec], ...] = (
            ("prompt", self.prompt_tokens),
            ("output", self.output_tokens),
        )
        for role, spec in roles:
            if isinstance(spec, PresetLength):
                try:
                    length_sampler(spec, role)
                except ValueError as exc:
                    raise ValueError(f"{role}_tokens: {exc}") from None
        if sum(isinstance(s, DiurnalShape) for s in self.shape) > MAX_DIURNALS:
            raise ValueError(f"shape: at most {MAX_DIURNALS} diurnal shapes per stream")
        return self


class WorkloadSpec(Strict):
    """Either generated streams (for duration_s seconds) or a trace to replay (cut at
    duration_s when given)."""

    duration_s: float | None = Field(None, gt=0)
    streams: list[StreamSpec] | None = Field(None, min_length=1)
    trace: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> WorkloadSpec:
        if self.streams is None and self.trace is None:
            raise ValueError("give 'streams' to generate requests or a 'trace' to replay")
        if self.streams is not None and self.trace is not None:
            raise ValueError("give 'streams' or 'trace', not both")
        if self.streams is not None and self.duration_s is None:
            raise ValueError("'duration_s' is required with streams: generation stops there")
        return self

    def model_names(self) -> set[str]:
        """The models the streams send to (none known for a trace before it is read)."""
        return {s.model for s in self.streams or ()}

    def slo_class_names(self) -> set[str]:
        """The SLO classes the streams use (none known for a trace before it is read)."""
        return {s.slo_class for s in self.streams or ()}


def arrivals(
    spec: WorkloadSpec,
    *,
    seed: int,
    base_dir: Path,
    models: Collection[str] | None = None,
    slo_classes: Collection[str] | None = None,
    default_slo_class: str = DEFAULT_SLO_CLASS,
) -> Iterator[Arrival]:
    """The workload's arrivals in time order, generated lazily (memory does not grow with
    their number). Streams merge by time, ties going to the earlier stream; each stream
    draws from its own generators seeded by (seed, its index), one for times and one for
    sizes, so adding a stream or changing its lengths leaves the other draws alone.
    A relative trace path is taken from ``base_dir``; ``models``, ``slo_classes`` and
    ``default_slo_class`` are the scenario's, for `read_trace`."""
    if spec.trace is not None:
        path = spec.trace if spec.trace.is_absolute() else base_dir / spec.trace
        if not path.is_file():
            raise FileNotFoundError(f"trace {path} does not exist")
        return read_trace(
            path,
            until=spec.duration_s,
            models=models,
            slo_classes=slo_classes,
            default_slo_class=default_slo_class,
        )
    assert spec.streams is not None and spec.duration_s is not None
    streams = [_generate(s, i, seed, spec.duration_s) for i, s in enumerate(spec.streams)]
    return streams[0] if len(streams) == 1 else _merge(streams)


def _merge(streams: list[Iterator[Arrival]]) -> Iterator[Arrival]:
    # At most one entry per stream, so (time, index) never ties and arrivals never compare.
    heap = [(a.time, i, a, it) for i, it in enumerate(streams) if (a := next(it, None)) is not None]
    heapq.heapify(heap)
    while heap:
        _, i, arrival, it = heap[0]
        yield arrival
        nxt = next(it, None)
        if nxt is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (nxt.time, i, nxt, it))


def _generate(stream: StreamSpec, index: int, seed: int, until: float) -> Iterator[Arrival]:
    times = random.Random(f"inferplane.workload/{seed}/{index}/times")
    sizes = random.Random(f"inferplane.workload/{seed}/{index}/sizes")
    prompt = length_sampler(stream.prompt_tokens, "prompt")
    output = length_sampler(stream.output_tokens, "output")
    shared = _prefixes(stream.prefix, f"stream-{index}") if stream.prefix else None
    intensity = Intensity(stream.rate, stream.shape)
    return _stream(stream, intensity, times, sizes, prompt, output, shared, until)


def _stream(
    stream: StreamSpec,
    intensity: Intensity,
    times: random.Random,
    sizes: random.Random,
    prompt: Callable[[random.Random], int],
    output: Callable[[random.Random], int],
    shared: Callable[[random.Random], tuple[str | None, int]] | None,
    until: float,
) -> Iterator[Arrival]:
    tenant, slo, model, workflow = stream.tenant, stream.slo_class, stream.model, stream.workflow
    tau, gap = gap_sampler(stream.arrivals, times)
    time_at = intensity.time_at
    per_request = 1.0 / intensity.rate  # homogeneous streams skip the inversion
    new = _new_arrival
    while (t := tau * per_request if intensity.homogeneous else time_at(tau)) < until:
        p = prompt(sizes)
        key, common = shared(sizes) if shared else (None, 0)
        yield new(t, tenant, slo, model, p + common, output(sizes), workflow, key, common)
        tau += gap()


def _arrival_factory() -> Callable[..., Arrival]:
    # A frozen dataclass's __init__ sets each field through object.__setattr__; setting the
    # slots through their descriptors is a third cheaper, on the twin's hottest path.
    slot_setters = [getattr(Arrival, f.name).__set__ for f in dataclasses.fields(Arrival)]
    s_time, s_tenant, s_slo, s_model, s_prompt, s_output, s_wf, s_key, s_common = slot_setters
    blank = object.__new__

    def new(
        time: float,
        tenant: str,
        slo_class: str,
        model: str,
        prompt_tokens: int,
        output_tokens: int,
        workflow: str | None,
        prefix_key: str | None,
        prefix_tokens: int,
    ) -> Arrival:
        arrival: Arrival = blank(Arrival)
        s_time(arrival, time)
        s_tenant(arrival, tenant)
        s_slo(arrival, slo_class)
        s_model(arrival, model)
        s_prompt(arrival, prompt_tokens)
        s_output(arrival, output_tokens)
        s_wf(arrival, workflow)
        s_key(arrival, prefix_key)
        s_common(arrival, prefix_tokens)
        return arrival

    return new


_new_arrival = _arrival_factory()


def _prefixes(
    prefix: PrefixSpec, default_key: str
) -> Callable[[random.Random], tuple[str | None, int]]:
    base = prefix.key or default_key
    keys = [f"{base}/{i}" for i in range(prefix.groups)]
    cum, total = [], 0.0
    for i in range(prefix.groups):
        total += 1.0 / (i + 1) ** prefix.zipf
        cum.append(total)
    tokens, fraction, last = prefix.tokens, prefix.fraction, prefix.groups - 1

    def draw(rng: random.Random) -> tuple[str | None, int]:
        if fraction < 1.0 and rng.random() >= fraction:
            return None, 0
        return keys[min(bisect.bisect(cum, rng.random() * total), last)], tokens

    return draw


# --- trace replay ---------------------------------------------------------------------

_COLUMNS = ("time", "tenant", "slo_class", "model", "prompt_tokens", "output_tokens")
# The gateway's per-request usage export (ledger event_rows) names two of them differently.
_EVENT_COLUMNS = ("time", "tenant", "model", "input_tokens", "output_tokens", "status")


class TraceError(ValueError):
    """A trace row that cannot be replayed, with the file, line and column."""


def read_trace(
    path: Path,
    *,
    until: float | None = None,
    models: Collection[str] | None = None,
    slo_classes: Collection[str] | None = None,
    default_slo_class: str = DEFAULT_SLO_CLASS,
) -> Iterator[Arrival]:
    """Replay a trace, streamed row by row: CSV (with a header; UTF-8, a leading byte
    order mark allowed, as spreadsheets write it) or JSONL (one object a line).

    Columns: ``time`` (seconds from the scenario's start, or ISO-8601 timestamps, taken
    relative to the first row), tenant, slo_class, model, prompt_tokens, output_tokens,
    and optionally workflow, prefix_key and prefix_tokens; other columns are ignored.
    Rows must be in time order. The gateway's usage export (``inferplane usage export
    --format events``, ledger ``event_rows``) is read as it is: input_tokens stands for
    prompt_tokens, an empty slo_class is ``default_slo_class`` (the gateway's default
    when the scenario names none), and rows of failed requests (status >= 400) or without
    token counts (no output) are skipped, since they put no generation on an engine.
    Arrivals stop before ``until`` seconds when it is given. When ``models`` or
    ``slo_classes`` are given (the scenario's), a row naming another is refused.
    Raises TraceError naming ``path:line: column:`` for anything it cannot read.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise TraceError(f"{path}: unknown trace format {suffix!r}; use .csv or .jsonl")
    names = _Names(models, slo_classes, default_slo_class)
    return _replay(path, rows, math.inf if until is None else until, names)


def _csv_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    # utf-8-sig: a byte order mark (Excel's "CSV UTF-8") is not part of the first column.
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            for values in reader:
                if not values:
                    continue
                if len(values) != len(header):
                    raise TraceError(
                        f"{path}:{reader.line_num}: {len(values)} fields, "
                        f"the header has {len(header)}"
                    )
                yield reader.line_num, dict(zip(header, values, strict=True))
        except UnicodeDecodeError as exc:
            # The file is decoded in blocks, so the bad byte's line is not known; only
            # that it comes after the lines already read.
            where = f" after line {reader.line_num}" if reader.line_num else ""
            raise TraceError(
                f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}{where}: "
                f"{exc.reason}); save the trace as UTF-8 CSV"
            ) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    with path.open("rb") as file:
        for line, raw in enumerate(file, start=1):
            if line == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise TraceError(f"{path}:{line}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise TraceError(f"{path}:{line}: expected a JSON object")
            yield line, row


def _replay(
    path: Path, rows: Iterable[tuple[int, Mapping[str, Any]]], until: float, names: _Names
) -> Iterator[Arrival]:
    events: bool | None = None
    clock = _Clock()
    last = -math.inf
    for line, row in rows:
        if events is None:
            events = "prompt_tokens" not in row and "input_tokens" in row
            needed = _EVENT_COLUMNS if events else _COLUMNS
            missing = [c for c in needed if c not in row]
            if missing:
                raise TraceError(
                    f"{path}:{line}: missing {', '.join(missing)}; a trace has columns "
                    f"{', '.join(_COLUMNS)} (or is a usage export with {', '.join(_EVENT_COLUMNS)})"
                )
        field = _Fields(row)
        try:
            arrival = _event(field, names.default_slo_class) if events else _request(field)
            if arrival is None:
                continue
            t = clock.seconds(row.get("time"))
        except _Bad as bad:
            raise TraceError(f"{path}:{line}: {bad.column}: {bad.message}") from None
        if t < last:
            raise TraceError(
                f"{path}:{line}: time: {t:g} s comes before the previous row's {last:g} s; "
                "sort the trace by time"
            )
        last = t
        if t >= until:
            return
        try:
            names.check(arrival)
        except _Bad as bad:
            raise TraceError(f"{path}:{line}: {bad.column}: {bad.message}") from None
        yield Arrival(t, *arrival)


class _Bad(Exception):
    def __init__(self, column: str, message: str) -> None:
        self.column, self.message = column, message


class _Names:
    """The models and SLO classes a trace may name (None: any), and the class of a usage
    event recorded without one."""

    def __init__(
        self,
        models: Collection[str] | None,
        slo_classes: Collection[str] | None,
        default_slo_class: str,
    ) -> None:
        self.models = None if models is None else frozenset(models)
        self.slo_classes = None if slo_classes is None else frozenset(slo_classes)
        self.default_slo_class = default_slo_class

    def check(self, row: _Row) -> None:
        _, slo_class, model, *_ = row
        if self.models is not None and model not in self.models:
            raise _Bad("model", f"{model!r} is not among the models {sorted(self.models)}")
        if self.slo_classes is not None and slo_class not in self.slo_classes:
            raise _Bad(
                "slo_class",
                f"{slo_class!r} is not among the slo_classes {sorted(self.slo_classes)}",
            )


class _Clock:
    """Seconds from a time cell: a number as it is, ISO-8601 relative to the first one."""

    def __init__(self) -> None:
        self.origin: datetime | None = None
        self.numeric: bool | None = None

    def seconds(self, value: Any) -> float:
        if isinstance(value, bool) or value is None or value == "":
            raise _Bad("time", "required")
        seconds: float | None = None
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = float(value)
            except ValueError:
                seconds = None
        if seconds is not None:
            if self.numeric is False:
                raise _Bad("time", "seconds in a trace of ISO-8601 timestamps")
            if not math.isfinite(seconds) or seconds < 0:
                raise _Bad("time", f"must be a non-negative number of seconds, got {value!r}")
            self.numeric = True
            return seconds
        if self.numeric:
            raise _Bad("time", f"{value!r} is not a number of seconds, as the first rows are")
        try:
            stamp = datetime.fromisoformat(str(value))
        except ValueError:
            raise _Bad("time", f"not seconds nor an ISO-8601 timestamp: {value!r}") from None
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=UTC)
        if self.origin is None:
            self.origin, self.numeric = stamp, False
        return (stamp - self.origin).total_seconds()


class _Fields:
    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row

    def text(self, column: str, *, required: bool = True) -> str | None:
        value = self.row.get(column)
        if value is None or value == "":
            if required:
                raise _Bad(column, "required")
            return None
        if not isinstance(value, str):
            raise _Bad(column, f"must be a string, got {value!r}")
        return value

    def count(self, column: str, *, minimum: int, required: bool = True) -> int | None:
        value = self.row.get(column)
        if value is None or value == "":
            if required:
                raise _Bad(column, "required")
            return None
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                number = int(text)
            else:
                try:
                    as_float = float(text)
                except ValueError:
                    as_float = math.nan
                if as_float.is_integer():
                    number = int(as_float)
        if number is None or number < minimum:
            kind = "positive" if minimum >= 1 else "non-negative"
            raise _Bad(column, f"must be a {kind} integer, got {value!r}")
        return number


_Row = tuple[str, str, str, int, int, str | None, str | None, int]


def _request(field: _Fields) -> _Row:
    prompt = field.count("prompt_tokens", minimum=1)
    output = field.count("output_tokens", minimum=1)
    key = field.text("prefix_key", required=False)
    common = field.count("prefix_tokens", minimum=0, required=False)
    assert prompt is not None and output is not None
    if key is None and common:
        raise _Bad("prefix_tokens", "needs a prefix_key naming what is shared")
    if key is not None and common is None:
        raise _Bad("prefix_tokens", "required with prefix_key")
    if common is not None and common > prompt:
        raise _Bad("prefix_tokens", f"{common} exceeds prompt_tokens ({prompt})")
    return (
        _required(field, "tenant"),
        _required(field, "slo_class"),
        _required(field, "model"),
        prompt,
        output,
        field.text("workflow", required=False),
        key,
        common or 0,
    )


def _event(field: _Fields, default_slo_class: str) -> _Row | None:
    status = field.count("status", minimum=0)
    assert status is not None
    prompt = field.count("input_tokens", minimum=0, required=False)
    output = field.count("output_tokens", minimum=0, required=False)
    if status >= 400 or not prompt or not output:
        return None
    return (
        _required(field, "tenant"),
        field.text("slo_class", required=False) or default_slo_class,
        _required(field, "model"),
        prompt,
        output,
        field.text("workflow", required=False),
        None,
        0,
    )


def _required(field: _Fields, column: str) -> str:
    value = field.text(column)
    assert value is not None
    return value
