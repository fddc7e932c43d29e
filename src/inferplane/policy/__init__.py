"""Pure decisions shared by the gateway and the twin: no I/O, no clock, time passed in."""

from inferplane.policy._balance import (
    BoundedLoadRing,
    ReplicaLoad,
    least_loaded_of_two,
    stable_hash,
)
from inferplane.policy._budgets import (
    Account,
    Amount,
    Book,
    BudgetLimits,
    Granted,
    Refused,
    Scope,
    Window,
)
from inferplane.policy._queueing import DispatchQueue, QueueItem, SloClass
from inferplane.policy._routing import RoundRobin

__all__ = [
    "Account",
    "Amount",
    "Book",
    "BoundedLoadRing",
    "BudgetLimits",
    "DispatchQueue",
    "Granted",
    "QueueItem",
    "Refused",
    "ReplicaLoad",
    "RoundRobin",
    "Scope",
    "SloClass",
    "Window",
    "least_loaded_of_two",
    "stable_hash",
]
