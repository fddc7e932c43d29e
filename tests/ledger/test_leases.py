"""Budget leases in SQLite and PostgreSQL: grants never exceed the budget, whoever asks,
concurrently or not; usage committed by the ledger consumes them; dead holders' grants
return."""

from __future__ import annotations

import contextlib
import threading

from inferplane.ledger import Charge, Database, LeaseRequest, LeaseStore, SqlLedger
from inferplane.policy import Amount, BudgetLimits, lease_ask

from .test_ledger import event, query

LIMITS = BudgetLimits(calls=50)
SCOPE = "tenant:acme"
LIFETIME = -(2**62)


def request(granted: int, used: int, calls: int) -> LeaseRequest:
    ask = lease_ask(
        LIMITS, LIMITS.like({"calls": granted}), Amount(calls=used), Amount(calls=calls)
    )
    assert ask is not None
    return LeaseRequest(SCOPE, LIMITS, LIFETIME, ask)


def store(database: Database) -> LeaseStore:
    with contextlib.closing(SqlLedger(database)) as ledger:  # creates the schema
        del ledger
    return LeaseStore(database)


def test_a_lease_grants_the_need_and_a_chunk_then_refuses_past_the_limit(
    database: Database,
) -> None:
    leases = store(database)
    (first,) = leases.lease("a/1", [request(0, 0, 1)], now=100.0, ttl_s=30)
    assert first.created and first.grant.ok and first.total["calls"] == 5
    (second,) = leases.lease("b/1", [request(0, 0, 44)], now=100.0, ttl_s=30)
    assert second.grant.ok and second.total["calls"] == 44  # half of the rest is all it needs
    (third,) = leases.lease("b/1", [request(44, 44, 2)], now=100.0, ttl_s=30)
    assert not third.grant.ok and third.grant.available == {"calls": 1}
    assert third.total["calls"] == 44 and not third.created
    leases.close()


def test_expired_and_released_leases_return_to_the_pool(database: Database) -> None:
    leases = store(database)
    leases.lease("host:1/7.0", [request(0, 0, 40)], now=100.0, ttl_s=30)
    leases.lease("other/1", [request(0, 0, 5)], now=100.0, ttl_s=30)
    (refused,) = leases.lease("late/1", [request(0, 0, 10)], now=120.0, ttl_s=30)
    assert not refused.grant.ok
    # The first holder stopped heart-beating; its grant is free once it expires.
    leases.heartbeat("other/1", 200.0)
    (granted,) = leases.lease("late/1", [request(0, 0, 10)], now=131.0, ttl_s=30)
    assert granted.grant.ok
    # A restarted instance takes back what its predecessor held, at once.
    leases.lease("host:1/8.0", [request(0, 0, 20)], now=140.0, ttl_s=30)
    leases.release_instance("host:1")
    leases.release("other/1")
    assert query(database, "SELECT holder FROM budget_leases") == [("late/1",)]
    leases.close()


async def test_committed_usage_moves_from_the_lease_to_spend(database: Database) -> None:
    leases = store(database)
    leases.lease("a/1", [request(0, 0, 1)], now=100.0, ttl_s=10**10)
    ledger = SqlLedger(database)
    e = event(1, tenant="acme")
    await ledger.append(e, Charge(Amount(calls=3), (SCOPE,), holder="a/1", leased=(SCOPE,)))
    ledger.close()
    assert query(
        database,
        "SELECT granted_calls, consumed_calls FROM budget_leases WHERE holder = 'a/1'",
    ) == [(5, 3)]
    # 3 spent + 2 unconsumed: 45 are left for the others.
    (other,) = leases.lease("b/1", [request(0, 0, 45)], now=100.0, ttl_s=30)
    assert other.grant.ok and other.grant.available == {"calls": 45}
    leases.give_back("a/1", [(SCOPE, {"calls": 2})])
    (more,) = leases.lease("b/1", [request(45, 45, 2)], now=100.0, ttl_s=30)
    assert more.grant.ok
    leases.close()


def test_holders_racing_for_a_budget_get_no_more_than_it_together(database: Database) -> None:
    store(database).close()
    granted: list[int] = []

    def holder(name: str) -> None:
        leases = LeaseStore(database)
        total = 0
        for _ in range(20):
            (result,) = leases.lease(name, [request(total, total, 1)], now=100.0, ttl_s=30)
            total = result.total["calls"]
        granted.append(total)
        leases.close()

    threads = [threading.Thread(target=holder, args=(f"h{i}/1",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 6
    assert sum(granted) == 50  # demand was 120: all of it is leased, and no more
    assert query(database, "SELECT SUM(granted_calls) FROM budget_leases") == [(50,)]
