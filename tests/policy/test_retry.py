"""RetryBudget: retries bounded by a share of the traffic, with a floor."""

from __future__ import annotations

from inferplane.policy import RetryBudget


def test_retrying_requests_stay_within_the_share_of_those_in_flight() -> None:
    b = RetryBudget(ratio=0.2, min_concurrent=2)
    for _ in range(20):
        b.started()
    assert [b.allow(already_retried=False) for _ in range(5)] == [True] * 4 + [False]
    assert b.allow(already_retried=True)  # its second retry takes no new share
    b.ended(retried=True)
    assert b.allow(already_retried=False)


def test_a_quiet_model_may_still_retry_up_to_the_floor() -> None:
    b = RetryBudget(ratio=0.2, min_concurrent=3)
    b.started()
    assert [b.allow(already_retried=False) for _ in range(4)] == [True, True, True, False]
