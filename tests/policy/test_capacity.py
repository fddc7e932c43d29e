"""learn_slots and learn_token_capacity: down to what the engine holds when it queues, up
slowly when it has room."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from inferplane.policy import EngineLoad, learn_slots, learn_token_capacity


def test_an_engine_that_queues_is_full_at_what_it_runs() -> None:
    assert learn_slots(64, EngineLoad(running=16, waiting=5, kv_usage=0.4), in_flight=21) == 16


def test_a_full_gateway_share_with_room_in_the_engine_probes_upwards() -> None:
    assert learn_slots(16, EngineLoad(running=16, waiting=0, kv_usage=0.5), in_flight=16) == 18
    assert learn_slots(4, EngineLoad(running=4, waiting=0, kv_usage=0.5), in_flight=4) == 5


def test_no_growth_without_demand_or_without_kv_room() -> None:
    assert learn_slots(16, EngineLoad(running=3, waiting=0, kv_usage=0.2), in_flight=3) == 16
    assert learn_slots(16, EngineLoad(running=16, waiting=0, kv_usage=0.95), in_flight=16) == 16
    assert learn_slots(1, EngineLoad(running=0, waiting=3, kv_usage=1.0), in_flight=3) == 1


def load(running: int = 4, waiting: int = 0, kv: float = 0.5) -> EngineLoad:
    return EngineLoad(running=running, waiting=waiting, kv_usage=kv)


def test_the_first_measurable_sample_sets_the_token_capacity_with_headroom() -> None:
    # 4,000 reserved tokens fill half the KV cache: 8,000 fit, 7,200 with headroom.
    assert learn_token_capacity(None, load(kv=0.5), in_flight_tokens=4000) == 7200


def test_nothing_is_learned_from_an_idle_or_nearly_empty_cache() -> None:
    assert learn_token_capacity(None, load(kv=0.5), in_flight_tokens=0) is None
    assert learn_token_capacity(None, load(kv=0.01), in_flight_tokens=100) is None
    assert learn_token_capacity(5000, load(kv=0.01), in_flight_tokens=100) == 5000


def test_an_engine_that_queues_cuts_the_capacity_to_what_it_runs() -> None:
    # It runs 3 of the gateway's 4 requests (4,000 tokens): 3,000 held, 2,700 with headroom.
    assert learn_token_capacity(10_000, load(3, 1, kv=1.0), in_flight_tokens=4000) == 2700
    assert learn_token_capacity(None, load(3, 1, kv=1.0), in_flight_tokens=4000) == 2700
    # Never upwards on a queueing engine.
    assert learn_token_capacity(1000, load(3, 1, kv=1.0), in_flight_tokens=4000) == 1000


def test_a_fuller_cache_than_expected_pulls_the_capacity_half_way_down() -> None:
    # Sample: 0.9 x 4000 / 0.9 = 4000; from 8000 half way is 6000.
    assert learn_token_capacity(8000, load(kv=0.9), in_flight_tokens=4000) == 6000


def test_growth_is_at_most_an_eighth_and_only_when_the_capacity_is_used() -> None:
    # Sample 0.9 x 4000 / 0.1 = 36,000, far above: +1/8 of 4000 while 4000 are in use.
    assert learn_token_capacity(4000, load(kv=0.1), in_flight_tokens=4000) == 4500
    # Only 1000 of 4000 in use: no grounds to grow.
    assert learn_token_capacity(4000, load(kv=0.02 * 5), in_flight_tokens=1000) == 4000
    # A sample just above grows to the sample, not beyond.
    assert learn_token_capacity(4000, load(kv=0.85), in_flight_tokens=3900) == 4129


@given(
    st.one_of(st.none(), st.integers(1, 10**7)),
    st.integers(0, 64),
    st.integers(0, 64),
    st.floats(0, 1),
    st.integers(0, 10**7),
)
def test_token_capacity_moves_towards_the_sample_and_only_down_when_the_engine_queues(
    capacity: int | None, running: int, waiting: int, kv: float, in_flight: int
) -> None:
    learned = learn_token_capacity(capacity, load(running, waiting, kv), in_flight)
    assert learned is None or learned >= 1
    if capacity is None or in_flight == 0:
        return
    assert learned is not None
    if waiting and running:
        assert learned <= capacity
    elif kv >= 0.05:
        sample = 0.9 * in_flight / kv
        assert min(capacity, sample) - 1 <= learned <= max(capacity, sample) + 1
    else:
        assert learned == capacity
