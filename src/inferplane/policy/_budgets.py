"""Execution budgets: reserve the worst case before a request runs, settle the truth after.

Pure arithmetic on integers (tokens, calls, retries, micro-dollars,
milliseconds), so nothing drifts; time is passed in. The same objects serve
one gateway's in-memory budgets, a lease of budget held by one process, and
the shared book a database keeps for several gateways.

Invariant (checked after every change, and by property tests): for every
account and every limited dimension, ``spent + reserved <= limit`` holds as
long as no settlement exceeds its reservation, and nothing is ever negative.
A settlement larger than its reservation is still recorded (the truth is the
truth) and shows as overspend; the gateway prevents it by cutting streams.
"""

from __future__ import annotations

import calendar
import enum
import sys
from collections import deque
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime  # calendar arithmetic on a given time; no clock is read
from typing import NamedTuple

__all__ = [
    "LIMIT_DIMENSIONS",
    "Account",
    "Amount",
    "Book",
    "BudgetLimits",
    "Granted",
    "Refused",
    "Scope",
    "Window",
    "charge_scopes",
    "units_that_fit",
]


class Amount(NamedTuple):
    """A quantity of every budget dimension; all integers, never floats.

    A named tuple rather than a frozen dataclass: several are made per request on the
    hot path, and a tuple is made four times faster."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0
    retries: int = 0
    cost_micros: int = 0  # US dollars x 1e6
    wall_ms: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    # Written out field by field, by index, and built with tuple.__new__ (not through the
    # named tuple's Python-level constructor): these run a dozen times per request.
    def __add__(self, other: Amount) -> Amount:  # type: ignore[override]
        return _new(
            Amount,
            (
                self[0] + other[0],
                self[1] + other[1],
                self[2] + other[2],
                self[3] + other[3],
                self[4] + other[4],
                self[5] + other[5],
            ),
        )

    def __sub__(self, other: Amount) -> Amount:
        return _new(
            Amount,
            (
                self[0] - other[0],
                self[1] - other[1],
                self[2] - other[2],
                self[3] - other[3],
                self[4] - other[4],
                self[5] - other[5],
            ),
        )

    def scaled(self, k: int) -> Amount:
        return Amount(
            k * self.input_tokens,
            k * self.output_tokens,
            k * self.calls,
            k * self.retries,
            k * self.cost_micros,
            k * self.wall_ms,
        )

    def get(self, dimension: str) -> int:
        if dimension == "total_tokens":
            return self[0] + self[1]
        return self[_INDEX[dimension]]

    def is_nonnegative(self) -> bool:
        return min(self) >= 0


_new = tuple.__new__
ZERO = Amount()
_INDEX = {name: i for i, name in enumerate(Amount._fields)}


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """Limits per dimension; None means unlimited. Every limit must be >= 0."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    calls: int | None = None
    retries: int | None = None
    cost_micros: int | None = None
    wall_ms: int | None = None
    # (dimension, limit) of the limited dimensions, computed once: checked per request.
    _limited: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)
    # The same as (Amount index, limit), total_tokens as index -1: checked per request.
    _indexed: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limited = tuple(
            (f.name, limit)
            for f in fields(self)
            if f.init and (limit := getattr(self, f.name)) is not None
        )
        for name, limit in limited:
            if limit < 0:
                raise ValueError(f"budget limit {name} must be >= 0, got {limit}")
        object.__setattr__(self, "_limited", limited)
        indexed = tuple((_INDEX.get(name, -1), limit) for name, limit in limited)
        object.__setattr__(self, "_indexed", indexed)

    def items(self) -> tuple[tuple[str, int], ...]:
        """(dimension, limit) for every limited dimension."""
        return self._limited

    def get(self, dimension: str) -> int | None:
        return getattr(self, dimension)  # type: ignore[no-any-return]

    def like(self, values: Mapping[str, int]) -> BudgetLimits:
        """Limits on the same dimensions as these, set from ``values`` (0 when absent)."""
        return BudgetLimits(**{d: values.get(d, 0) for d, _ in self._limited})


# Every dimension a limit can name: the Amount fields and total_tokens.
LIMIT_DIMENSIONS = tuple(f.name for f in fields(BudgetLimits) if f.init)


class Window(enum.StrEnum):
    """Which spend counts: all of it; since the start of the UTC calendar day or month
    (reset exactly at the boundary); or the last 24 hours or 30 days (rolling: spend
    leaves the window in 1-minute or 1-hour buckets)."""

    LIFETIME = "lifetime"
    DAY = "day"
    MONTH = "month"
    ROLLING_DAY = "rolling_day"
    ROLLING_MONTH = "rolling_month"

    @property
    def rolling(self) -> tuple[float, float] | None:
        """(length, bucket) in seconds for rolling windows, None for the others."""
        return _ROLLING.get(self)

    def start(self, now: float) -> float:
        """Unix time at which the window that counts at ``now`` began."""
        if self is Window.LIFETIME:
            return float("-inf")
        if (rolling := self.rolling) is not None:
            return now - rolling[0]
        t = datetime.fromtimestamp(now, UTC)
        day = 1 if self is Window.MONTH else t.day
        return float(calendar.timegm((t.year, t.month, day, 0, 0, 0)))


_ROLLING = {Window.ROLLING_DAY: (86_400.0, 60.0), Window.ROLLING_MONTH: (30 * 86_400.0, 3600.0)}


class Scope(NamedTuple):
    """Who a budget belongs to: ``tenant``, ``key``, ``workflow`` or ``run``, and an id.
    (A named tuple: scopes are dictionary keys on every request, and hash fast.)"""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"


@dataclass(frozen=True, slots=True)
class Granted:
    request_id: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The first scope and dimension that could not fit the request."""

    scope: Scope
    dimension: str
    limit: int
    used: int  # spent + reserved in the current window
    requested: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(eq=False)  # one per scope: equal only to itself (holds find it by identity)
class Account:
    """One scope's budget in its current window: what is spent and what is held
    (``reserved``: the sum of the holds on it, which its ``Book`` keeps)."""

    scope: Scope
    limits: BudgetLimits
    window: Window = Window.LIFETIME
    window_start: float = float("-inf")
    spent: Amount = ZERO
    reserved: Amount = ZERO
    # Rolling windows: spend per time bucket (index, amount), oldest first; sums to ``spent``.
    buckets: deque[tuple[int, Amount]] = field(default_factory=deque)

    def roll(self, now: float) -> None:
        """Move the window to ``now``: calendar windows reset spend at their boundary,
        rolling ones let old buckets go. Holds stay held."""
        if self.window is Window.LIFETIME:
            return
        start = self.window.start(now)
        if start <= self.window_start:
            return
        self.window_start = start
        rolling = self.window.rolling
        if rolling is None:
            self.spent = ZERO
            return
        length, bucket = rolling
        oldest = int(now // bucket) - int(length // bucket) + 1
        while self.buckets and self.buckets[0][0] < oldest:
            self.spent = self.spent - self.buckets.popleft()[1]

    def record(self, amount: Amount, now: float) -> None:
        """Count ``amount`` as spent at ``now`` (settlements, and spend loaded at start)."""
        if self.window is Window.LIFETIME:
            self.spent = self.spent + amount
            return
        self.roll(now)
        self.spent = self.spent + amount
        rolling = self.window.rolling
        if rolling is not None:
            index = int(now // rolling[1])
            if self.buckets and self.buckets[-1][0] == index:
                amount = self.buckets.pop()[1] + amount
            self.buckets.append((index, amount))

    def check(self, amount: Amount, now: float) -> Refused | None:
        """Would ``amount`` fit on top of what is spent and held? None when it does."""
        if self.window is not Window.LIFETIME:
            self.roll(now)
        spent, reserved = self.spent, self.reserved
        # By index, not by name: this runs for every scope of every request.
        for i, limit in self.limits._indexed:
            if i >= 0:
                used = spent[i] + reserved[i] + amount[i]
            else:  # total tokens
                used = spent[0] + spent[1] + reserved[0] + reserved[1] + amount[0] + amount[1]
            if used > limit:
                return self._refusal(amount)
        return None

    def _refusal(self, amount: Amount) -> Refused:
        used = self.spent + self.reserved
        for dimension, limit in self.limits.items():
            if used.get(dimension) + amount.get(dimension) > limit:
                return Refused(
                    self.scope, dimension, limit, used.get(dimension), amount.get(dimension)
                )
        raise AssertionError("check found a dimension over its limit")

    def fit(self, base: Amount, unit: Amount, now: float) -> int | None:
        """The most units ``k`` such that ``base + k * unit`` fits; None if ``base`` does not.

        With nothing limiting ``unit``, the answer is unbounded (``sys.maxsize``)."""
        return units_that_fit(self.room(now), base, unit)

    def room(self, now: float) -> dict[str, int]:
        """Per limited dimension, what is neither spent nor held (negative when overspent)."""
        self.roll(now)
        used = self.spent + self.reserved
        return {dim: limit - used.get(dim) for dim, limit in self.limits.items()}

    def remaining(self, now: float) -> dict[str, int]:
        return {dim: max(0, room) for dim, room in self.room(now).items()}


@dataclass(slots=True)
class _Hold:
    """One request's hold, on every account of its path at once."""

    amount: Amount
    expires_at: float
    accounts: tuple[Account, ...]


def units_that_fit(room: dict[str, int], base: Amount, unit: Amount) -> int | None:
    """The most ``k`` with ``base + k * unit`` within ``room`` in every dimension it names;
    None when ``base`` alone does not fit."""
    most = sys.maxsize
    for dimension, free in room.items():
        left = free - base.get(dimension)
        if left < 0:
            return None
        per_unit = unit.get(dimension)
        if per_unit > 0:
            most = min(most, left // per_unit)
    return most


def charge_scopes(
    tenant: str, key_name: str, workflow: str | None, run: str | None
) -> tuple[Scope, ...]:
    """Every scope a request is charged to, outermost first: tenant, key, and the
    workflow and run it names (a run outside a workflow is under ``-``)."""
    scopes = [Scope("tenant", tenant), Scope("key", f"{tenant}/{key_name}")]
    if workflow is not None:
        scopes.append(Scope("workflow", f"{tenant}/{workflow}"))
    if run is not None:
        scopes.append(Scope("run", f"{tenant}/{workflow or '-'}/{run}"))
    return tuple(scopes)


class Book:
    """All accounts; a request is charged to every scope on its path, all or nothing.

    A hold is kept once per request, with the accounts it is on: holding,
    settling and expiring touch each account's ``reserved`` and nothing else."""

    def __init__(self) -> None:
        self.accounts: dict[Scope, Account] = {}
        self.holds: dict[str, _Hold] = {}

    def open(self, scope: Scope, limits: BudgetLimits, window: Window = Window.LIFETIME) -> None:
        """Add a budget, or change the limits of one (its spend is kept)."""
        account = self.accounts.get(scope)
        if account is None:
            self.accounts[scope] = Account(scope, limits, window)
        else:
            account.limits, account.window = limits, window

    def reserve(
        self, request_id: str, scopes: Iterable[Scope], amount: Amount, now: float, ttl_s: float
    ) -> Granted | Refused:
        """Hold ``amount`` in every budgeted scope, or in none if one cannot fit it. A
        request that holds already gives its hold up first, if the new one fits."""
        if not amount.is_nonnegative():
            raise ValueError(f"cannot reserve a negative amount: {amount}")
        accounts = tuple(a for s in scopes if (a := self.accounts.get(s)) is not None)
        for account in accounts:
            refused = account.check(amount, now)
            if refused is not None:
                return refused
        self._release(request_id)
        for account in accounts:
            account.reserved = account.reserved + amount
        self.holds[request_id] = _Hold(amount, now + ttl_s, accounts)
        return Granted(request_id)

    def fit(self, scopes: Iterable[Scope], base: Amount, unit: Amount, now: float) -> int | None:
        """The most units of ``unit`` that fit on top of ``base`` in every budgeted scope;
        None when ``base`` alone does not fit one of them."""
        most = sys.maxsize
        for scope in scopes:
            account = self.accounts.get(scope)
            if account is not None:
                k = account.fit(base, unit, now)
                if k is None:
                    return None
                most = min(most, k)
        return most

    def settle(self, request_id: str, scopes: Iterable[Scope], actual: Amount, now: float) -> None:
        """Replace the hold of ``request_id`` (if any) by what it actually used."""
        if not actual.is_nonnegative():
            raise ValueError(f"cannot settle a negative amount: {actual}")
        self._release(request_id)
        for scope in scopes:
            account = self.accounts.get(scope)
            if account is not None:
                account.record(actual, now)

    def expire(self, now: float, keep: Container[str] = ()) -> set[str]:
        """Drop holds past their expiry (requests that crashed), but not those of the
        requests in ``keep`` (known to be still running); returns their ids."""
        gone = {
            rid for rid, hold in self.holds.items() if hold.expires_at <= now and rid not in keep
        }
        for rid in gone:
            self._release(rid)
        return gone

    def held_on(self, account: Account) -> bool:
        """Whether any hold is on ``account`` (a scan: for housekeeping, not per request)."""
        return any(account in hold.accounts for hold in self.holds.values())

    def _release(self, request_id: str) -> None:
        hold = self.holds.pop(request_id, None)
        if hold is None:
            return
        for account in hold.accounts:
            account.reserved = account.reserved - hold.amount
            # The invariant, cheaply: holds are non-negative, so only a release of more
            # than was held could take ``reserved`` below zero.
            assert account.reserved.calls >= 0 and account.reserved.input_tokens >= 0
