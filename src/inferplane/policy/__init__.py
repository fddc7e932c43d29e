"""Pure decisions shared by the gateway and the twin: no I/O, no clock, time passed in."""

from inferplane.policy._balance import (
    BoundedLoadRing,
    ReplicaLoad,
    least_loaded_of_two,
    stable_hash,
)
from inferplane.policy._budgets import (
    LIMIT_DIMENSIONS,
    Account,
    Amount,
    Book,
    BudgetLimits,
    Granted,
    Refused,
    Scope,
    Window,
    charge_scopes,
    units_that_fit,
)
from inferplane.policy._capacity import EngineLoad, learn_slots, learn_token_capacity
from inferplane.policy._dispatch import ClassPolicy, Dispatcher, Unattainable
from inferplane.policy._health import Breaker, BreakerState, Health
from inferplane.policy._hedging import LatencyTracker
from inferplane.policy._leases import LeaseAsk, LeaseGrant, lease_ask, lease_grant
from inferplane.policy._queueing import DispatchQueue, QueueItem, SloClass
from inferplane.policy._retry import RetryBudget
from inferplane.policy._routing import Router, RoutingMode

__all__ = [
    "LIMIT_DIMENSIONS",
    "Account",
    "Amount",
    "Book",
    "BoundedLoadRing",
    "Breaker",
    "BreakerState",
    "BudgetLimits",
    "ClassPolicy",
    "DispatchQueue",
    "Dispatcher",
    "EngineLoad",
    "Granted",
    "Health",
    "LatencyTracker",
    "LeaseAsk",
    "LeaseGrant",
    "QueueItem",
    "Refused",
    "ReplicaLoad",
    "RetryBudget",
    "Router",
    "RoutingMode",
    "Scope",
    "SloClass",
    "Unattainable",
    "Window",
    "charge_scopes",
    "learn_slots",
    "learn_token_capacity",
    "lease_ask",
    "lease_grant",
    "least_loaded_of_two",
    "stable_hash",
    "units_that_fit",
]
