"""Dispatcher: admission by predicted wait, slots per replica, expiry, all on a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from inferplane.policy import ClassPolicy, Dispatcher, QueueItem, Unattainable

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
