"""Failure schedule: seeded, exact with a scripted source, right on average."""

from __future__ import annotations

import itertools
import random

import pytest

from inferplane.policy._failures import GPU_MTBF_S, FailureModel, Outage


class Scripted:
    """A `RandomSource` that returns its script, recording the rates asked for."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.rates: list[float] = []

    def expovariate(self, lambd: float, /) -> float:
        self.rates.append(lambd)
        return self.values.pop(0)


def test_up_and_down_times_alternate_from_the_draws() -> None:
    model = FailureModel(mtbf_s=1000.0, mean_repair_s=50.0)
    rng = Scripted(300.0, 20.0, 500.0, 40.0, 9999.0)
    assert model.outages(1, start=100.0, until=2000.0, rng=rng) == [
        Outage(0, 400.0, 420.0),
        Outage(0, 920.0, 960.0),
    ]
    # Up-times drawn at rate 1/mtbf, repairs at 1/mean_repair.
    assert rng.rates == [1 / 1000, 1 / 50, 1 / 1000, 1 / 50, 1 / 1000]


def test_fixed_repair_takes_the_mean() -> None:
    model = FailureModel(mtbf_s=1000.0, mean_repair_s=50.0, repair="fixed")
    rng = Scripted(300.0, 9999.0)
    assert model.outages(1, 0.0, 2000.0, rng) == [Outage(0, 300.0, 350.0)]


def test_same_seed_same_schedule_and_replicas_do_not_disturb_earlier_ones() -> None:
    model = FailureModel(mtbf_s=3600.0, mean_repair_s=300.0)
    one = model.outages(3, 0.0, 86_400.0, random.Random(7))
    assert one == model.outages(3, 0.0, 86_400.0, random.Random(7))
    assert one != model.outages(3, 0.0, 86_400.0, random.Random(8))
    # Replica 0's draws come first, so adding replicas leaves its outages as they were.
    first = [o for o in one if o.replica == 0]
    assert first == model.outages(1, 0.0, 86_400.0, random.Random(7))
    # Ordered by failure time, each outage inside the horizon, none overlapping per replica.
    assert one == sorted(one, key=lambda o: (o.failed_at, o.replica))
    for replica in range(3):
        mine = [o for o in one if o.replica == replica]
        assert all(0.0 <= o.failed_at < 86_400.0 for o in mine)
        assert all(a.repaired_at <= b.failed_at for a, b in itertools.pairwise(mine))


def test_long_run_averages_match_the_means() -> None:
    model = FailureModel(mtbf_s=1000.0, mean_repair_s=100.0)
    outages = model.outages(1, 0.0, 5_000_000.0, random.Random(42))
    downs = [o.repaired_at - o.failed_at for o in outages]
    ups = [b.failed_at - a.repaired_at for a, b in itertools.pairwise(outages)]
    assert sum(downs) / len(downs) == pytest.approx(100.0, rel=0.05)
    assert sum(ups) / len(ups) == pytest.approx(1000.0, rel=0.05)
    # Availability mtbf / (mtbf + repair) = 0.909.
    assert 1 - sum(downs) / 5_000_000.0 == pytest.approx(1000 / 1100, abs=0.01)


def test_next_failure_and_repair_one_at_a_time() -> None:
    model = FailureModel(mtbf_s=10.0, mean_repair_s=2.0)
    assert model.next_failure_at(5.0, Scripted(3.0)) == 8.0
    assert model.repaired_at(8.0, Scripted(1.5)) == 9.5


def test_replica_mtbf_from_the_gpu_figure() -> None:
    # 2,111 GPU-days per GPU; an 8-GPU replica fails every 264 days or so.
    gpu_days = GPU_MTBF_S / 86_400
    assert gpu_days == pytest.approx(2111.5, abs=0.1)
    assert FailureModel.for_gpus(8, 600.0).mtbf_s == pytest.approx(GPU_MTBF_S / 8)
    with pytest.raises(ValueError, match="num_gpus"):
        FailureModel.for_gpus(0, 600.0)


def test_validation() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        FailureModel(mtbf_s=0.0, mean_repair_s=1.0)
    with pytest.raises(ValueError, match="repair must be"):
        FailureModel(1.0, 1.0, repair="weibull")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="until >= start"):
        FailureModel(1.0, 1.0).outages(1, 10.0, 5.0, random.Random(0))
    assert FailureModel(1.0, 1.0).outages(0, 0.0, 10.0, random.Random(0)) == []
