"""Pure decisions shared by the gateway and the twin: no I/O, no clock, time passed in."""

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
    "BudgetLimits",
    "DispatchQueue",
    "Granted",
    "QueueItem",
    "Refused",
    "RoundRobin",
    "Scope",
    "SloClass",
    "Window",
]
