"""Lease arithmetic: holders sharing a budget never get more than it, together."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.policy import Amount, BudgetLimits, lease_ask, lease_grant

LIMITS = BudgetLimits(calls=50, cost_micros=10_000)


def test_a_request_that_fits_what_is_leased_asks_for_nothing() -> None:
    leased = BudgetLimits(calls=5, cost_micros=1000)
    assert lease_ask(LIMITS, leased, Amount(calls=2), Amount(calls=1, cost_micros=100)) is None


def test_the_ask_is_the_shortfall_plus_a_sixteenth_of_the_limit() -> None:
    ask = lease_ask(LIMITS, LIMITS.like({}), Amount(), Amount(calls=1, cost_micros=100))
    assert ask is not None
    assert ask.need == {"calls": 1, "cost_micros": 100}
    assert ask.want == {"calls": 1 + 4, "cost_micros": 100 + 625}


def test_a_grant_is_all_of_the_need_or_nothing() -> None:
    ask = lease_ask(LIMITS, LIMITS.like({}), Amount(), Amount(calls=1, cost_micros=100))
    assert ask is not None
    spent = Amount(calls=45, cost_micros=9_950)
    refused = lease_grant(LIMITS, spent, {}, ask)
    assert not refused.ok and refused.refused == "cost_micros" and refused.granted == {}
    assert refused.available == {"calls": 5, "cost_micros": 50}
    # Others' unconsumed leases count as taken.
    assert not lease_grant(LIMITS, Amount(calls=40), {"calls": 10}, ask).ok
    granted = lease_grant(LIMITS, Amount(calls=40), {"calls": 6}, ask)
    assert granted.ok and granted.granted == {"calls": 2, "cost_micros": 725}


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # holder
            st.sampled_from(["lease", "consume", "die"]),
            st.integers(1, 7),  # calls asked or consumed
        ),
        max_size=80,
    )
)
def test_spend_plus_live_leases_never_exceeds_the_limit(
    steps: list[tuple[int, str, int]],
) -> None:
    """The store's view: spent, and per live holder (granted, consumed); holders consume
    only within their grant, dead holders' grants return to the pool."""
    limits = BudgetLimits(calls=50)
    spent = 0
    leases: dict[int, list[int]] = {}  # holder -> [granted, consumed]
    for holder, action, n in steps:
        lease = leases.setdefault(holder, [0, 0])
        if action == "lease":
            ask = lease_ask(
                limits, limits.like({"calls": lease[0]}), Amount(calls=lease[1]), Amount(calls=n)
            )
            if ask is not None:
                others = sum(g - c for h, (g, c) in leases.items())
                grant = lease_grant(limits, Amount(calls=spent), {"calls": others}, ask)
                lease[0] += grant.granted.get("calls", 0)
                if grant.ok:
                    assert lease[0] - lease[1] >= n
        elif action == "consume":
            used = min(n, lease[0] - lease[1])
            lease[1] += used
            spent += used
        else:
            del leases[holder]
        unconsumed = sum(g - c for g, c in leases.values())
        assert min(min(g - c, c) for g, c in leases.values()) >= 0 if leases else True
        assert spent + unconsumed <= 50
