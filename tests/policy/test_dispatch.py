"""Dispatcher: admission by predicted wait, slots per replica, expiry, all on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.policy import ClassPolicy, Dispatcher, Health, QueueItem, Unattainable

CLASSES = {
    "realtime": ClassPolicy("realtime", 0, max_queue_s=0.5),
    "interactive": ClassPolicy("interactive", 1, max_queue_s=2.0),
    "batch": ClassPolicy("batch", 2, max_queue_s=600.0),
}


def item(rid: str, cls: str = "interactive", tenant: str = "t", at: float = 0.0) -> QueueItem:
    return QueueItem(rid, tenant, cls, 100, at)


def test_replicas_without_a_limit_take_everything_at_once() -> None:
    d = Dispatcher(CLASSES, [None], aging_s=10)
    for i in range(100):
        assert d.submit(item(f"r{i}"), 0.0) is None
    assert len(d.dispatch(0.0)) == 100


def test_work_starts_only_where_there_is_room_and_fills_the_emptiest_replica() -> None:
    d = Dispatcher(CLASSES, [2, 1], aging_s=10)
    for i in range(5):
        d.submit(item(f"r{i}"), 0.0)
    started = d.dispatch(0.0)
    assert [r for _, r in started] == [0, 1, 0]
    assert d.dispatch(0.0) == []
    d.finished(1, service_s=1.0)
    assert [(i.request_id, r) for i, r in d.dispatch(1.0)] == [("r3", 1)]


def test_urgent_classes_overtake_queued_batch_work() -> None:
    d = Dispatcher(CLASSES, [1], aging_s=10)
    d.submit(item("b1", "batch"), 0.0)
    d.dispatch(0.0)  # b1 runs
    d.submit(item("b2", "batch"), 0.1)
    d.submit(item("rt", "realtime"), 0.2)
    d.finished(0, service_s=1.0)
    assert [i.request_id for i, _ in d.dispatch(1.0)] == ["rt"]


def test_admission_refuses_what_would_wait_past_its_class_bound() -> None:
    d = Dispatcher(CLASSES, [2], aging_s=10)
    for i in range(2):
        d.submit(item(f"run{i}"), 0.0)
    d.dispatch(0.0)
    d.finished(0, service_s=1.0)  # measured: a request holds a slot 1 s; 2 slots: 2/s
    d.dispatch(0.0)
    d.submit(item("x0"), 0.0)  # refills the freed slot
    d.dispatch(0.0)
    # Full: a new interactive request waits for 1 release (0.5 s): admitted.
    assert d.submit(item("i1"), 0.0) is None
    # Realtime: nothing of its class ahead, yet one release away: 0.5 s, at its bound.
    assert d.submit(item("rt1", "realtime"), 0.0) is None
    # Now the realtime request ahead makes the next one wait 1 s: refused, retry in 1 s.
    refused = d.submit(item("rt2", "realtime"), 0.0)
    assert isinstance(refused, Unattainable)
    assert (refused.predicted_wait_s, refused.retry_after_s) == (1.0, 1)
    # Batch may wait ten minutes: always admitted here.
    assert d.submit(item("b", "batch"), 0.0) is None


def test_nothing_is_refused_before_a_service_time_is_measured() -> None:
    d = Dispatcher(CLASSES, [1], aging_s=10)
    for i in range(10):
        assert d.submit(item(f"r{i}", "realtime"), 0.0) is None


def test_requests_that_wait_too_long_leave_the_queue() -> None:
    d = Dispatcher(CLASSES, [1], aging_s=10)
    d.submit(item("busy"), 0.0)
    d.dispatch(0.0)
    d.submit(item("rt", "realtime", at=1.0), 1.0)
    d.submit(item("i", "interactive", at=1.0), 1.0)
    assert d.next_expiry() == 1.5
    assert [i.request_id for i in d.expire(1.6)] == ["rt"]
    assert d.next_expiry() == 3.0
    assert d.cancel("i") and not d.cancel("i")
    assert d.next_expiry() is None


@pytest.mark.parametrize("tokens", [False, True], ids=["slots", "tokens"])
def test_with_no_capacity_anywhere_requests_queue_until_their_class_bound(tokens: bool) -> None:
    # Every replica down (a driver gives those no slots or tokens) after a service time was
    # measured: no rate to predict a wait from, so nothing is refused at admission (a
    # replica may come back: a repair, a cold start); the wait bound still holds.
    slots: list[int | None] = [None, None] if tokens else [2, 2]
    d = Dispatcher(CLASSES, slots, aging_s=10, token_capacity=[1000, 1000] if tokens else None)
    d.submit(item("r0"), 0.0)
    [(_, replica)] = d.dispatch(0.0)
    d.finished(replica, service_s=1.0, tokens=100)
    d.slots[:] = [0, 0]
    if tokens:
        d.token_capacity[:] = [0, 0]
    assert d.predicted_wait("realtime", tokens=100) == 0.0
    for i in range(5):
        assert d.submit(item(f"q{i}", "realtime", at=1.0), 1.0) is None
    assert d.dispatch(1.0) == []
    assert [i.request_id for i in d.expire(1.6)] == [f"q{i}" for i in range(5)]
    # One comes back: what waits starts there.
    d.submit(item("late", at=2.0), 2.0)
    d.slots[1] = slots[1]
    if tokens:
        d.token_capacity[1] = 1000
    assert [(i.request_id, r) for i, r in d.dispatch(2.5)] == [("late", 1)]


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["submit", "dispatch", "finish", "expire"]),
            st.integers(0, 2),
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=60,
    )
)
def test_slots_are_never_overfilled_and_nothing_is_lost(
    steps: list[tuple[str, int, str]],
) -> None:
    d = Dispatcher(CLASSES, [2, 1, 3], aging_s=5)
    running: list[tuple[str, int]] = []
    seen: set[str] = set()
    gone: set[str] = set()
    now = 0.0
    for n, (action, k, tenant) in enumerate(steps):
        now += 0.25
        cls = list(CLASSES)[k]
        if action == "submit":
            rid = f"r{n}"
            seen.add(rid)
            if d.submit(item(rid, cls, tenant=tenant, at=now), now) is not None:
                gone.add(rid)
        elif action == "dispatch":
            running += [(i.request_id, r) for i, r in d.dispatch(now)]
        elif action == "finish" and running:
            rid, replica = running.pop(k % len(running))
            d.finished(replica, service_s=1.0)
            gone.add(rid)
        else:
            gone.update(i.request_id for i in d.expire(now))
        for replica, limit in enumerate(d.slots):
            assert d.in_flight[replica] == sum(1 for _, r in running if r == replica)
            assert limit is None or d.in_flight[replica] <= limit
        queued = {i.request_id for i in d.queue.items()}
        # Every request is queued, running or finished/refused/expired: exactly one of them.
        assert queued | {rid for rid, _ in running} | gone == seen
        assert not queued & gone and not queued & {rid for rid, _ in running}


def test_work_waits_rather_than_go_to_an_ejected_replica_unless_all_are() -> None:
    d = Dispatcher(CLASSES, [1, 1], aging_s=10)
    for i in range(3):
        d.submit(item(f"r{i}"), 0.0)
    started = d.dispatch(0.0, usable=lambda i: i == 1)
    assert [r for _, r in started] == [1]  # replica 0 has room but is ejected
    # Every replica ejected: trying one beats waiting out the ejections.
    assert [r for _, r in d.dispatch(0.0, usable=lambda i: False)] == [0]


def test_a_replica_back_from_ejection_takes_one_probe_not_a_burst() -> None:
    health = Health(2, base_ejection_s=1.0)
    health.failed(1, 0.0, refused=True)  # ejected until t=1
    d = Dispatcher(CLASSES, [1, 8], aging_s=10)
    for i in range(6):
        d.submit(item(f"r{i}"), 0.0)
    started = d.dispatch(2.0, lambda i: health.available(i, 2.0), placed=health.sent)
    assert sorted(r for _, r in started) == [0, 1]  # one probe; the rest wait for it
    # A probe that ends with no outcome (cancelled) lets the next request probe.
    health.abandoned(1)
    assert [r for _, r in d.dispatch(2.0, lambda i: health.available(i, 2.0), health.sent)] == [1]


# -- token capacity --------------------------------------------------------------


def sized(rid: str, tokens: int, cls: str = "interactive", at: float = 0.0) -> QueueItem:
    return QueueItem(rid, "t", cls, tokens, at)


def test_work_starts_only_where_its_tokens_fit() -> None:
    d = Dispatcher(CLASSES, [None, None], aging_s=10, token_capacity=[1000, 500])
    for rid, tokens in (("a", 600), ("b", 400), ("c", 400), ("d", 300)):
        d.submit(sized(rid, tokens), 0.0)
    started = [(i.request_id, r) for i, r in d.dispatch(0.0)]
    # a -> 0 (600/1000), b -> 1 (400/500), c -> 0 (1000/1000); d fits nowhere: waits.
    assert started == [("a", 0), ("b", 1), ("c", 0)]
    assert d.tokens_in_flight == [1000, 400]
    d.finished(1, service_s=1.0, tokens=400)
    assert [(i.request_id, r) for i, r in d.dispatch(1.0)] == [("d", 1)]


def test_the_head_waits_for_room_rather_than_be_overtaken() -> None:
    d = Dispatcher(CLASSES, [None], aging_s=10, token_capacity=[1000])
    d.submit(sized("small", 200), 0.0)
    d.dispatch(0.0)
    d.submit(sized("big", 900), 0.1)
    d.submit(sized("tiny", 10), 0.2)
    assert d.dispatch(0.2) == []  # tiny would fit, but big is ahead of it
    d.finished(0, service_s=1.0, tokens=200)
    assert [i.request_id for i, _ in d.dispatch(1.0)] == ["big", "tiny"]


def test_an_empty_replica_takes_a_request_larger_than_its_capacity() -> None:
    d = Dispatcher(CLASSES, [None], aging_s=10, token_capacity=[100])
    d.submit(sized("huge", 5000), 0.0)
    d.submit(sized("next", 10), 0.0)
    assert [i.request_id for i, _ in d.dispatch(0.0)] == ["huge"]  # alone
    d.finished(0, service_s=1.0, tokens=5000)
    assert [i.request_id for i, _ in d.dispatch(1.0)] == ["next"]


def test_slots_and_tokens_both_bound_a_replica() -> None:
    d = Dispatcher(CLASSES, [2], aging_s=10, token_capacity=[10_000])
    for i in range(3):
        d.submit(sized(f"r{i}", 10), 0.0)
    assert len(d.dispatch(0.0)) == 2


def test_waits_are_predicted_in_tokens_when_tokens_bound_the_replicas() -> None:
    d = Dispatcher(CLASSES, [None], aging_s=10, token_capacity=[1000])
    d.submit(sized("r1", 500), 0.0)
    d.submit(sized("r2", 500), 0.0)
    d.dispatch(0.0)
    d.finished(0, service_s=2.0, tokens=500)  # measured: a request holds its tokens 2 s
    d.submit(sized("r3", 500), 0.0)
    d.dispatch(0.0)  # full again: 1000 tokens in flight
    # 1000 tokens free up every 2 s.
    assert d.submit(sized("ahead", 500), 0.0) is None  # its own 500: 1 s
    assert d.predicted_wait("interactive", tokens=500) == 2.0  # 500 ahead + its own 500
    assert d.predicted_wait("realtime", tokens=600) == 1.2  # nothing of its class ahead
    refused = d.submit(sized("late", 600, "realtime"), 0.0)
    assert isinstance(refused, Unattainable) and refused.max_queue_s == 0.5


# -- TTFT targets ------------------------------------------------------------------

TARGETS = {
    "realtime": ClassPolicy("realtime", 0, max_queue_s=5.0, ttft_s=0.5),
    "batch": ClassPolicy("batch", 2, max_queue_s=600.0),
}


def full(classes: dict[str, ClassPolicy] = TARGETS) -> Dispatcher:
    """One slot, busy, a request measured to hold it 1 s."""
    d = Dispatcher(classes, [1], aging_s=10)
    d.submit(item("warm", "batch"), 0.0)
    d.dispatch(0.0)
    d.finished(0, service_s=1.0)
    d.submit(item("busy", "batch"), 0.0)
    d.dispatch(0.0)
    return d


def test_a_request_whose_wait_and_first_token_miss_the_target_is_refused() -> None:
    d = full()
    # Wait 1 s (one release) is within max_queue_s (5 s) but 1 + 0.2 > 0.5.
    refused = d.submit(item("rt", "realtime"), 0.0, first_token_s=0.2)
    assert isinstance(refused, Unattainable)
    assert (refused.ttft_s, refused.first_token_s, refused.predicted_wait_s) == (0.5, 0.2, 1.0)
    assert refused.retry_after_s == 1  # ceil(1 + 0.2 - 0.5)
    assert len(d.queue) == 0


def test_the_deadline_needs_a_measurement_and_a_wait() -> None:
    d = full()
    assert d.submit(item("unmeasured", "realtime"), 0.0) is None  # no grounds to refuse
    idle = Dispatcher(TARGETS, [1], aging_s=10)
    # Can start at once: admitted even if the measurement says it will be late (it may
    # be stale, and starting it measures anew).
    assert idle.submit(item("now", "realtime"), 0.0, first_token_s=3.0) is None


def test_classes_without_a_target_ignore_the_first_token_time() -> None:
    d = full()
    assert d.submit(item("b", "batch"), 0.0, first_token_s=100.0) is None


def test_a_target_met_with_room_to_spare_is_admitted() -> None:
    loose = dict(TARGETS, realtime=ClassPolicy("realtime", 0, max_queue_s=5.0, ttft_s=2.0))
    d = full(loose)
    assert d.submit(item("rt", "realtime"), 0.0, first_token_s=0.5) is None  # 1 + 0.5 <= 2


@settings(max_examples=200)
@given(st.floats(0, 10), st.floats(0, 10), st.floats(0.01, 10))
def test_deadline_admission_is_exactly_wait_plus_first_token_against_the_target(
    service: float, first_token: float, target: float
) -> None:
    classes = {"c": ClassPolicy("c", 0, max_queue_s=1e9, ttft_s=target)}
    d = Dispatcher(classes, [1], aging_s=10)
    d.submit(item("x", "c"), 0.0)
    d.dispatch(0.0)
    d.finished(0, service_s=service)
    d.submit(item("y", "c"), 0.0)
    d.dispatch(0.0)
    wait = d.predicted_wait("c")
    refused = d.submit(item("z", "c"), 0.0, first_token_s=first_token)
    assert (refused is not None) == (wait > 0 and wait + first_token > target)


# -- spare slots (hedges) and unmeasured releases ------------------------------------


def test_a_spare_slot_is_taken_elsewhere_only_when_nothing_queues() -> None:
    d = Dispatcher(CLASSES, [1, 1], aging_s=10)
    d.submit(item("a"), 0.0)
    [(_, first)] = d.dispatch(0.0)
    spare = d.take_spare(100, exclude={first})
    assert spare is not None and spare != first and d.in_flight == [1, 1]
    assert d.take_spare(100, exclude={first}) is None  # no room left
    d.finished(spare, 0.0, tokens=100, measured=False)
    assert d.mean_service_s is None  # a cancelled attempt says nothing of service times
    d.submit(item("b"), 0.0)
    d.submit(item("c"), 0.0)
    d.dispatch(0.0)  # b takes the free slot, c queues
    d.finished(0, 1.0)
    assert d.take_spare(100, exclude=set()) is None  # c waits: a hedge must not overtake
    assert d.take_spare(100, exclude=set(), usable=lambda i: False) is None
