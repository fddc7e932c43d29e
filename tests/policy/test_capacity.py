"""learn_slots: down to what the engine runs when it queues, up slowly when it has room."""

from __future__ import annotations

from inferplane.policy import EngineLoad, learn_slots


def test_an_engine_that_queues_is_full_at_what_it_runs() -> None:
    assert learn_slots(64, EngineLoad(running=16, waiting=5, kv_usage=0.4), in_flight=21) == 16


def test_a_full_gateway_share_with_room_in_the_engine_probes_upwards() -> None:
    assert learn_slots(16, EngineLoad(running=16, waiting=0, kv_usage=0.5), in_flight=16) == 18
    assert learn_slots(4, EngineLoad(running=4, waiting=0, kv_usage=0.5), in_flight=4) == 5


def test_no_growth_without_demand_or_without_kv_room() -> None:
    assert learn_slots(16, EngineLoad(running=3, waiting=0, kv_usage=0.2), in_flight=3) == 16
    assert learn_slots(16, EngineLoad(running=16, waiting=0, kv_usage=0.95), in_flight=16) == 16
    assert learn_slots(1, EngineLoad(running=0, waiting=3, kv_usage=1.0), in_flight=3) == 1
