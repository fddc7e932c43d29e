"""Load-aware choice: power of two choices, consistent hashing with bounded loads."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from inferplane.policy import BoundedLoadRing, ReplicaLoad, least_loaded_of_two


def loads(*tokens: int, down: tuple[int, ...] = ()) -> list[ReplicaLoad]:
    return [ReplicaLoad(i, t, healthy=i not in down) for i, t in enumerate(tokens)]


def two_choices(tokens: list[int], key: str, down: tuple[int, ...] = ()) -> int | None:
    up = [i for i in range(len(tokens)) if i not in down]
    return least_loaded_of_two(up, tokens.__getitem__, key)


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=8), st.text(max_size=20))
def test_two_choices_never_pick_a_unique_maximum(tokens: list[int], key: str) -> None:
    chosen = two_choices(tokens, key)
    assert chosen is not None
    # The pick is the lighter of two distinct replicas, so never the one heaviest of all.
    if tokens.count(max(tokens)) == 1:
        assert tokens[chosen] < max(tokens)
    assert two_choices(tokens, key) == chosen  # deterministic


def test_two_choices_spread_over_all_replicas_and_skip_the_down_ones() -> None:
    picks = Counter(two_choices([0, 0, 0, 0], f"r{i}", down=(2,)) for i in range(400))
    assert set(picks) == {0, 1, 3}
    assert min(picks.values()) > 80
    assert two_choices([5, 1], "x") == 1
    assert two_choices([5], "x", down=(0,)) is None


def test_ring_keeps_keys_put_and_spreads_them() -> None:
    ring = BoundedLoadRing(4)
    balanced = loads(100, 100, 100, 100)
    homes = {f"prefix-{i}": ring.choose(f"prefix-{i}", balanced) for i in range(1000)}
    assert all(ring.choose(k, balanced) == home for k, home in homes.items())  # sticky
    shares = Counter(homes.values())
    assert all(150 <= shares[i] <= 350 for i in range(4)), shares


def test_a_hot_key_spills_to_the_next_replica_instead_of_overloading_its_own() -> None:
    ring = BoundedLoadRing(4, c=1.25)
    home = ring.choose("hot", loads(0, 0, 0, 0))
    assert home is not None
    busy = [0, 0, 0, 0]
    busy[home] = 1000  # far above 1.25 x the mean
    spill = ring.choose("hot", loads(*busy))
    assert spill is not None and spill != home
    assert ring.choose("hot", loads(*busy, down=(spill,))) not in (home, spill)


def test_adding_a_replica_moves_few_keys() -> None:
    keys = [f"session-{i}" for i in range(2000)]
    before = BoundedLoadRing(4, c=100)  # a loose bound: pure consistent hashing
    after = BoundedLoadRing(5, c=100)
    moved = sum(
        before.choose(k, loads(0, 0, 0, 0)) != after.choose(k, loads(0, 0, 0, 0, 0)) for k in keys
    )
    assert moved < 2000 * 0.35  # about 1/5 ideally; modulo hashing would move 4/5
