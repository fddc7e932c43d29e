"""Budget arithmetic: nested scopes, all-or-nothing holds, settle, expiry, calendar windows."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.policy import Amount, Book, BudgetLimits, Granted, Refused, Scope, Window

TENANT = Scope("tenant", "acme")
RUN = Scope("run", "r1")
PATH = (TENANT, RUN)


def book(tenant: BudgetLimits, run: BudgetLimits | None = None) -> Book:
    b = Book()
    b.open(TENANT, tenant)
    if run is not None:
        b.open(RUN, run)
    return b


def test_a_request_must_fit_every_scope_on_its_path() -> None:
    b = book(BudgetLimits(total_tokens=1000), run=BudgetLimits(total_tokens=300))
    assert b.reserve("a", PATH, Amount(input_tokens=100, output_tokens=150), 0, 60) == Granted("a")
    refused = b.reserve("b", PATH, Amount(input_tokens=50, output_tokens=60), 0, 60)
    assert refused == Refused(RUN, "total_tokens", limit=300, used=250, requested=110)
    assert refused.remaining == 50
    # Nothing was held anywhere for the refused request.
    assert b.accounts[TENANT].reserved == Amount(input_tokens=100, output_tokens=150)


def test_settle_replaces_the_worst_case_by_the_actual_usage() -> None:
    b = book(BudgetLimits(output_tokens=100))
    b.reserve("a", PATH, Amount(output_tokens=80), 0, 60)
    assert isinstance(b.reserve("b", PATH, Amount(output_tokens=30), 0, 60), Refused)
    b.settle("a", PATH, Amount(output_tokens=12), 1)
    assert b.accounts[TENANT].remaining(1) == {"output_tokens": 88}
    assert b.reserve("b", PATH, Amount(output_tokens=30), 1, 60) == Granted("b")


def test_holds_of_crashed_requests_expire() -> None:
    b = book(BudgetLimits(calls=1))
    b.reserve("crashed", PATH, Amount(calls=1), now=0, ttl_s=30)
    assert isinstance(b.reserve("next", PATH, Amount(calls=1), 29, 30), Refused)
    assert b.expire(now=30) == {"crashed"}
    assert b.reserve("next", PATH, Amount(calls=1), 30, 30) == Granted("next")


def test_cost_is_exact_in_micro_dollars() -> None:
    b = book(BudgetLimits(cost_micros=1_000_000))  # $1.00
    for i in range(10):  # ten times $0.10 fits exactly, with no float drift
        assert b.reserve(str(i), PATH, Amount(cost_micros=100_000), 0, 60) == Granted(str(i))
    assert isinstance(b.reserve("x", PATH, Amount(cost_micros=1), 0, 60), Refused)


def ts(*ymdhms: int) -> float:
    return float(calendar.timegm(ymdhms))


def test_calendar_windows_reset_exactly_at_the_boundary() -> None:
    b = Book()
    b.open(TENANT, BudgetLimits(calls=1), Window.DAY)
    just_before, midnight = ts(2026, 3, 31, 23, 59, 59), ts(2026, 4, 1, 0, 0, 0)
    b.reserve("a", PATH, Amount(calls=1), just_before, 60)
    b.settle("a", PATH, Amount(calls=1), just_before)
    assert isinstance(b.reserve("b", PATH, Amount(calls=1), midnight - 0.001, 60), Refused)
    assert b.reserve("b", PATH, Amount(calls=1), midnight, 60) == Granted("b")


@pytest.mark.parametrize(
    ("window", "now", "start"),
    [
        (Window.DAY, ts(2026, 2, 28, 13, 5, 0), ts(2026, 2, 28, 0, 0, 0)),
        (Window.MONTH, ts(2026, 2, 28, 13, 5, 0), ts(2026, 2, 1, 0, 0, 0)),
        (Window.MONTH, ts(2028, 12, 31, 23, 59, 59), ts(2028, 12, 1, 0, 0, 0)),
        (Window.LIFETIME, ts(2026, 1, 1, 0, 0, 0), float("-inf")),
    ],
)
def test_window_start(window: Window, now: float, start: float) -> None:
    assert window.start(now) == start


def test_negative_limits_and_amounts_are_refused() -> None:
    with pytest.raises(ValueError, match="calls must be >= 0"):
        BudgetLimits(calls=-1)
    with pytest.raises(ValueError, match="negative"):
        Book().reserve("a", PATH, Amount(input_tokens=-5), 0, 60)


# -- properties ------------------------------------------------------------

amounts = st.builds(
    Amount,
    input_tokens=st.integers(0, 400),
    output_tokens=st.integers(0, 400),
    calls=st.integers(0, 2),
    retries=st.integers(0, 2),
    cost_micros=st.integers(0, 50_000),
    wall_ms=st.integers(0, 5_000),
)
ops = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "settle", "expire", "tick"]),
        amounts,
        st.integers(0, 30),
        st.floats(0, 1),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_no_sequence_of_operations_breaks_the_books(
    steps: list[tuple[str, Amount, int, float]],
) -> None:
    limits = BudgetLimits(total_tokens=3000, calls=20, cost_micros=400_000)
    b = book(limits, run=BudgetLimits(output_tokens=1500))
    now = 0.0
    held: dict[str, Amount] = {}
    settled_total = Amount()
    for i, (op, amount, pick, fraction) in enumerate(steps):
        if op == "reserve":
            if isinstance(b.reserve(f"r{i}", PATH, amount, now, ttl_s=5), Granted):
                held[f"r{i}"] = amount
        elif op == "settle" and held:
            rid = sorted(held)[pick % len(held)]
            reserved = held.pop(rid)
            # A request never uses more than it reserved (the gateway cuts it off).
            actual = Amount(
                *(
                    int(getattr(reserved, f) * fraction)
                    for f in (
                        "input_tokens",
                        "output_tokens",
                        "calls",
                        "retries",
                        "cost_micros",
                        "wall_ms",
                    )
                )
            )
            b.settle(rid, PATH, actual, now)
            settled_total = settled_total + actual
        elif op == "expire":
            for rid in b.expire(now):
                held.pop(rid, None)
        else:
            now += pick / 10
        for account in b.accounts.values():
            used = account.spent + account.reserved
            assert account.spent.is_nonnegative() and account.reserved.is_nonnegative()
            for dimension, limit in account.limits.items():
                assert used.get(dimension) <= limit
    # Reconcile: expire everything; what remains spent is exactly what was settled.
    b.expire(now + 10)
    assert not b.holds
    for account in b.accounts.values():
        assert account.reserved == Amount()
        assert account.spent == settled_total


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2000),
    st.integers(0, 2000),
    st.integers(0, 300),
    st.integers(1, 9),
    st.integers(0, 50),
)
def test_fit_finds_the_largest_number_of_units_that_fits(
    limit: int, used: int, base_tokens: int, per_unit: int, cost_per_unit: int
) -> None:
    b = Book()
    b.open(TENANT, BudgetLimits(total_tokens=limit, cost_micros=5000))
    b.reserve("used", PATH, Amount(input_tokens=min(used, limit)), 0, 60)
    base = Amount(input_tokens=base_tokens, calls=1)
    unit = Amount(output_tokens=per_unit, cost_micros=cost_per_unit)
    k = b.fit(PATH, base, unit, 0)
    if k is None:
        assert isinstance(b.reserve("x", PATH, base, 0, 60), Refused)
        return
    assert b.reserve("x", PATH, base + unit.scaled(k), 0, 60) == Granted("x")
    b.expire(61)  # drop both holds, then check that one more unit would not have fitted
    b.reserve("used", PATH, Amount(input_tokens=min(used, limit)), 61, 60)
    assert isinstance(b.reserve("y", PATH, base + unit.scaled(k + 1), 61, 60), Refused)


def test_rolling_day_lets_spend_go_after_24_hours() -> None:
    b = Book()
    b.open(TENANT, BudgetLimits(calls=1), Window.ROLLING_DAY)
    b.reserve("a", PATH, Amount(calls=1), 0.0, 60)
    b.settle("a", PATH, Amount(calls=1), 30.0)  # spent in the bucket [0, 60)
    assert isinstance(b.reserve("b", PATH, Amount(calls=1), 86_399.9, 60), Refused)
    assert b.reserve("b", PATH, Amount(calls=1), 86_400.0, 60) == Granted("b")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 3 * 86_400), st.integers(0, 50)), max_size=40))
def test_rolling_spend_is_what_was_settled_in_the_last_window(
    settlements: list[tuple[float, int]],
) -> None:
    b = Book()
    b.open(TENANT, BudgetLimits(output_tokens=10**9), Window.ROLLING_DAY)
    account = b.accounts[TENANT]
    now = 0.0
    history: list[tuple[float, int]] = []
    for i, (t, tokens) in enumerate(sorted(settlements)):
        now = t
        b.settle(str(i), PATH, Amount(output_tokens=tokens), now)
        history.append((now, tokens))
        account.roll(now)
        # Buckets of one minute: a settlement counts while its minute is in the last 1440.
        oldest = int(now // 60) - 1440 + 1
        expected = sum(n for when, n in history if int(when // 60) >= oldest)
        assert account.spent.output_tokens == expected
