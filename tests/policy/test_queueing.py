"""DispatchQueue: priority with aging between classes, token fairness between tenants."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.policy import DispatchQueue, QueueItem, SloClass

CLASSES = {
    "realtime": SloClass("realtime", 0),
    "interactive": SloClass("interactive", 1),
    "batch": SloClass("batch", 2),
}


def item(
    rid: str, tenant: str = "t", cls: str = "interactive", tokens: int = 100, at: float = 0.0
) -> QueueItem:
    return QueueItem(rid, tenant, cls, tokens, at)


def test_strict_priority_between_fresh_requests() -> None:
    q = DispatchQueue(CLASSES, aging_s=10)
    for rid, cls in (("b", "batch"), ("i", "interactive"), ("r", "realtime")):
        q.push(item(rid, cls=cls))
    assert [q.pop(0.0).request_id for _ in range(3)] == ["r", "i", "b"]  # type: ignore[union-attr]
    assert q.pop(0.0) is None


def test_aging_lets_a_batch_request_pass_after_its_bound() -> None:
    # Batch is two levels below realtime: after 2 x aging_s it outranks new realtime work.
    q = DispatchQueue(CLASSES, aging_s=10)
    q.push(item("old-batch", cls="batch", at=0.0))
    q.push(item("rt-1", cls="realtime", at=19.9))
    assert q.pop(19.9).request_id == "rt-1"  # type: ignore[union-attr]
    q.push(item("rt-2", cls="realtime", at=20.1))
    assert q.pop(20.1).request_id == "old-batch"  # type: ignore[union-attr]


@settings(max_examples=50, deadline=None)
@given(st.floats(1, 100), st.integers(1, 40))
def test_no_batch_request_waits_longer_than_the_aging_bound(aging: float, n: int) -> None:
    # A steady stream of fresh realtime work, one dispatch per second.
    q = DispatchQueue(CLASSES, aging_s=aging)
    for i in range(n):
        q.push(item(f"b{i}", cls="batch", at=float(i)))
    waited = {}
    t = 0.0
    while q.depth("batch"):
        q.push(item(f"r{t}", cls="realtime", at=t))
        popped = q.pop(t)
        assert popped is not None
        if popped.slo_class == "batch":
            waited[popped.request_id] = t - popped.enqueued_at
        t += 1.0
        assert t < 10_000, "starved"
    # Each batch request waits at most its aging bound plus two dispatches (its turn
    # alternates with realtime's) per batch request ahead of it.
    assert max(waited.values()) <= 2 * aging + 2 * n + 1


def test_an_old_backlog_shares_dispatches_instead_of_taking_them_all() -> None:
    # Sustained overload: the batch backlog never empties and is always old. Realtime
    # arrives at a third of the dispatch rate and must keep flowing.
    q = DispatchQueue(CLASSES, aging_s=10)
    for i in range(2000):
        q.push(item(f"b{i}", cls="batch", at=0.0))
    realtime_waits = []
    served = Counter()
    for step in range(600):
        t = float(step)
        if step % 3 == 0:
            q.push(item(f"r{step}", cls="realtime", at=t))
        popped = q.pop(t)
        assert popped is not None
        served[popped.slo_class] += 1
        if popped.slo_class == "realtime":
            realtime_waits.append(t - popped.enqueued_at)
    assert max(realtime_waits) <= 1.0  # never waits behind the old batch for long
    assert served["batch"] >= 390  # and batch takes what realtime leaves


def test_a_heavy_tenant_cannot_take_a_light_tenants_share() -> None:
    q = DispatchQueue(CLASSES, aging_s=60)
    for i in range(100):
        q.push(item(f"heavy-{i}", tenant="heavy"))
    for i in range(10):
        q.push(item(f"light-{i}", tenant="light"))
    first_20 = Counter(q.pop(0.0).tenant for _ in range(20))  # type: ignore[union-attr]
    assert first_20 == {"heavy": 10, "light": 10}


def test_weights_set_the_shares_of_tokens() -> None:
    q = DispatchQueue(CLASSES, aging_s=60, tenant_weights={"gold": 2.0, "bronze": 1.0})
    for i in range(60):
        q.push(item(f"g{i}", tenant="gold"))
        q.push(item(f"b{i}", tenant="bronze"))
    first_30 = Counter(q.pop(0.0).tenant for _ in range(30))  # type: ignore[union-attr]
    assert first_30 == {"gold": 20, "bronze": 10}


def test_idle_time_is_not_banked_as_credit() -> None:
    q = DispatchQueue(CLASSES, aging_s=60)
    for i in range(50):
        q.push(item(f"a{i}", tenant="a"))
    for _ in range(40):  # a alone is served 40 requests, each settled as it ends
        served = q.pop(0.0)
        assert served is not None
        q.settle("a", "interactive", served.tokens, served.tokens)
    for i in range(20):
        q.push(item(f"late{i}", tenant="late"))
    next_10 = Counter(q.pop(0.0).tenant for _ in range(10))  # type: ignore[union-attr]
    assert next_10 == {"a": 5, "late": 5}  # alternating, not "late" ten times


def test_corrections_and_removals() -> None:
    q = DispatchQueue(CLASSES, aging_s=60)
    q.push(item("x", tenant="a"))
    q.push(item("y", tenant="b"))
    assert q.remove("y") is not None and q.remove("y") is None
    assert len(q) == 1 and q.depth("interactive") == 1
    with pytest.raises(ValueError, match="queued already"):
        q.push(item("x", tenant="a"))
    with pytest.raises(KeyError):
        q.push(item("z", cls="gold"))
    q.settle("a", "interactive", reserved=10_000, used=0)  # never below zero
    assert q._classes["interactive"].counters["a"] == 0.0


def test_a_tenant_is_counted_the_tokens_it_used_not_those_it_reserved() -> None:
    # "big" asks for 4096 tokens a request and uses 20; "small" asks for 64 and uses 64.
    # A newcomer is not lifted to what "big" holds in flight, and "big" is not held back
    # by what it never used: over time both are served about the same tokens.
    q = DispatchQueue(CLASSES, aging_s=60)
    used = {"big": 20, "small": 64}
    for i in range(100):
        q.push(QueueItem(f"b{i}", "big", "interactive", 4096, 0.0))
    first = q.pop(0.0)  # "big" is served while "small" has nothing queued yet
    assert first is not None
    for i in range(100):
        q.push(QueueItem(f"s{i}", "small", "interactive", 64, 0.0))
    q.settle("big", "interactive", 4096, used["big"])
    served = {"big": used["big"], "small": 0}
    order = []
    for _ in range(60):  # one at a time, each settled before the next pop
        popped = q.pop(0.0)
        assert popped is not None
        order.append(popped.tenant[0])
        q.settle(popped.tenant, "interactive", popped.tokens, used[popped.tenant])
        served[popped.tenant] += used[popped.tenant]
    assert "s" in order[:3]  # the newcomer waits for no one's unused reservation
    assert 0.5 < served["big"] / served["small"] < 2, (served, "".join(order))


def test_a_tenant_whose_backlog_emptied_does_not_break_the_class() -> None:
    q = DispatchQueue(CLASSES, aging_s=10)
    q.push(item("a1", tenant="a"))
    assert q.pop(0.0).request_id == "a1"  # type: ignore[union-attr]
    q.push(item("b1", tenant="b"))  # "a" is still known, with an empty backlog
    assert q.pop(1.0).request_id == "b1"  # type: ignore[union-attr]


def test_classes_of_equal_priority_share_tokens_by_weight() -> None:
    classes = {
        "gold": SloClass("gold", 1, weight=3.0),
        "silver": SloClass("silver", 1, weight=1.0),
        "batch": SloClass("batch", 2),
    }
    q = DispatchQueue(classes, aging_s=60)
    for i in range(100):
        q.push(item(f"g{i}", cls="gold"))
        q.push(item(f"s{i}", cls="silver"))
        q.push(item(f"b{i}", cls="batch"))
    first_40 = Counter(q.pop(0.0).slo_class for _ in range(40))  # type: ignore[union-attr]
    assert first_40 == {"gold": 30, "silver": 10}  # batch still waits: strict priority


def test_class_weights_count_tokens_not_requests() -> None:
    classes = {"a": SloClass("a", 0), "b": SloClass("b", 0)}
    q = DispatchQueue(classes, aging_s=60)
    for i in range(50):
        q.push(item(f"a{i}", cls="a", tokens=300))
        q.push(item(f"b{i}", cls="b", tokens=100))
    served = Counter()
    for _ in range(40):
        popped = q.pop(0.0)
        assert popped is not None
        served[popped.slo_class] += popped.tokens
    assert abs(served["a"] - served["b"]) <= 300  # equal tokens, within one request


def test_a_class_back_from_idle_banks_no_credit_against_its_peers() -> None:
    classes = {"a": SloClass("a", 0), "b": SloClass("b", 0)}
    q = DispatchQueue(classes, aging_s=60)
    for i in range(50):
        q.push(item(f"a{i}", cls="a"))
    for _ in range(40):
        q.pop(0.0)  # "a" alone is served 40 requests
    for i in range(20):
        q.push(item(f"b{i}", cls="b"))
    next_10 = Counter(q.pop(0.0).slo_class for _ in range(10))  # type: ignore[union-attr]
    assert next_10 == {"a": 5, "b": 5}


def test_aging_applies_to_a_priority_level_as_a_whole() -> None:
    classes = {
        "rt": SloClass("rt", 0),
        "b1": SloClass("b1", 2, weight=1.0),
        "b2": SloClass("b2", 2, weight=9.0),
    }
    q = DispatchQueue(classes, aging_s=10)
    q.push(item("old", cls="b1", at=0.0))
    q.push(item("rt", cls="rt", at=20.1))
    assert q.pop(20.1).request_id == "old"  # type: ignore[union-attr]


def test_peek_shows_what_pop_returns_and_tokens_are_counted() -> None:
    q = DispatchQueue(CLASSES, aging_s=10)
    assert q.peek(0.0) is None
    q.push(item("b", cls="batch", tokens=7))
    q.push(item("r", cls="realtime", tokens=5))
    assert (q.tokens("batch"), q.tokens("realtime")) == (7, 5)
    head = q.peek(0.0)
    assert head is not None and head.request_id == "r" and len(q) == 2
    assert q.pop(0.0) is head
    q.remove("b")
    assert q.tokens("batch") == 0


def test_a_class_weight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="weight must be positive"):
        SloClass("x", 0, weight=0.0)
