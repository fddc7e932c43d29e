"""Budgets at the door: which scopes a request is charged to, its worst case, 429 when it won't fit.

A request is charged to every budgeted scope on its path: tenant, key,
workflow and run (the last two from ``X-Inferplane-Workflow`` and
``X-Inferplane-Run``). Before dispatch it holds its worst case (counted
prompt tokens + ``max_tokens``, one call, their price); when it ends, the
hold is replaced by its actual usage. Holds of requests that never ended
expire.

Gateway processes share budgets through the ledger's database with leases
(``policy/_leases.py``): this process admits against its local ``Book``,
whose limits are the budget it has leased, and goes to the database only
when a request does not fit what it holds. A heartbeat keeps its leases
alive; if it cannot reach the database for two thirds of the lease TTL, it
stops trusting its leases (a new holder epoch) before anyone else may
reclaim them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from inferplane.config import RUN_ID, Budget, Config, Model, Pricing
from inferplane.gateway._auth import Principal, Registry
from inferplane.ledger import Charge, LeaseRequest, LeaseResult, LeaseStore
from inferplane.perf import count_chat_tokens, count_text_tokens
from inferplane.policy import (
    Amount,
    Book,
    Granted,
    Refused,
    Scope,
    charge_scopes,
    lease_ask,
    units_that_fit,
)
from inferplane.wire import OpenAIError

__all__ = [
    "MIN_PARTIAL_OUTPUT",
    "RUN_HEADER",
    "WORKFLOW_HEADER",
    "Admission",
    "BudgetGate",
    "ChargePath",
    "choices_of",
    "worst_case",
]

WORKFLOW_HEADER = "x-inferplane-workflow"
RUN_HEADER = "x-inferplane-run"
_ID = re.compile(RUN_ID)
# The least output worth answering with when a budget can no longer fit the worst case.
MIN_PARTIAL_OUTPUT = 16
# Leased budget a scope has not used for this long goes back to the pool.
_IDLE_GIVE_BACK_S = 10.0
# Scopes nobody used for this long leave memory (their spend stays in the ledger).
_IDLE_EVICT_S = 3600.0
# Charge paths and budgets remembered, per request shape, before starting over.
_MEMO_SIZE = 65536
_T = TypeVar("_T")
log = logging.getLogger("inferplane.gateway")


@dataclass(frozen=True, slots=True)
class ChargePath:
    """Where a request's usage is charged."""

    workflow: str | None
    run: str | None
    scopes: tuple[Scope, ...]
    names: tuple[str, ...]  # the scopes as the ledger names them (str(scope))


@dataclass(frozen=True, slots=True)
class Admission:
    """What a request may use: the amount held, and when its run's wall time runs out."""

    held: Amount
    deadline: float | None = None  # unix time; None without a wall-time budget
    deadline_scope: Scope | None = None


def _header_id(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        return None
    if not _ID.fullmatch(value):
        raise OpenAIError(
            400,
            f"Header {name} must be 1-128 characters of letters, digits and "
            f"'._:-', starting with a letter or digit; got {value[:40]!r}.",
            "invalid_header",
            param=name,
        )
    return value


def choices_of(body: dict[str, Any], operation: str) -> int:
    """How many answers a request asks for, each up to ``max_tokens``: ``n`` (and a
    completion's ``best_of``, which it generates and then drops). Values the backend
    will refuse count as one."""
    if operation == "embeddings" or ("n" not in body and "best_of" not in body):
        return 1
    counts = [body.get("n"), body.get("best_of") if operation == "text_completion" else None]
    return max([c for c in counts if isinstance(c, int) and c > 0], default=1)


def worst_case(body: dict[str, Any], operation: str, model: Model, price: Pricing) -> Amount:
    """The most a request can use: its prompt, counted, and all the output it may ask
    for, ``max_tokens`` for each of its choices."""
    if operation == "chat":
        messages = body.get("messages")
        prompt = count_chat_tokens(messages) if isinstance(messages, list) else 0
    else:
        text = body.get("prompt" if operation == "text_completion" else "input")
        items = text if isinstance(text, list) else [text]
        prompt = sum(
            count_text_tokens(t) if isinstance(t, str) else len(t) if isinstance(t, list) else 0
            for t in items
        )
    output = 0
    if operation != "embeddings":
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        output = asked if isinstance(asked, int) and asked > 0 else model.max_output_tokens
        output *= choices_of(body, operation)
    return Amount(
        input_tokens=prompt,
        output_tokens=output,
        calls=1,
        cost_micros=price.cost_micros(prompt, output),
    )


class BudgetGate:
    def __init__(
        self, config: Config, registry: Registry, leases: LeaseStore | None, instance: str
    ) -> None:
        self.config = config
        self.registry = registry
        self.book = Book()
        self._leases = leases
        # Leases of this process are held as "<instance>/<pid>.<epoch>".
        self._instance = instance
        self._epoch = 0
        self._ttl_s = config.gateway.lease_ttl_s
        self._valid_until = -math.inf  # the leases held may be trusted until then
        self._next_heartbeat = -math.inf
        self._last_used: dict[Scope, float] = {}
        self._run_started: dict[Scope, float] = {}  # runs with a wall-time budget
        self._retry_holds: dict[str, list[str]] = {}  # request id -> holds of its retries
        self._lock = asyncio.Lock()  # one lease conversation at a time
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="budget-leases")
        # Per request, what only changes with the tenants: charge paths by (tenant, key,
        # workflow, run); budgets by scope or (tenant, key), as of registry ``_version``.
        self._paths: dict[tuple[str, str, str | None, str | None], ChargePath] = {}
        self._budgets: dict[Scope | tuple[str, str], Any] = {}
        self._version = registry.version
        self._holder = ""
        # Requests holding budget, by hold id, while their owner (the gateway's record of
        # the request) lives: their holds do not expire, however long they stream. A
        # hold whose owner is gone without settling (a bug) still expires.
        self._running: dict[str, weakref.ref[object]] = {}

    @property
    def holder(self) -> str:
        if not self._holder:
            self._holder = f"{self._instance}/{os.getpid()}.{self._epoch}"
        return self._holder

    async def start(self, now: float) -> None:
        """Take back what an earlier process of this instance (killed, say) still held."""
        if self._leases is not None:
            await self._db(self._leases.release_instance, self._instance)
            await self._heartbeat(now)

    async def close(self) -> None:
        """Give every lease back: a clean stop leaves the whole budget to the others."""
        if self._leases is not None:
            try:
                await self._db(self._leases.release, self.holder)
            except OpenAIError as exc:
                log.warning("budget leases not released (they expire): %s", exc.message)
            self._leases.close()
        self._executor.shutdown()

    def path(self, principal: Principal, headers: Mapping[str, str]) -> ChargePath:
        """The scopes a request is charged to: from its headers, else its key's defaults."""
        workflow = _header_id(headers, WORKFLOW_HEADER) or principal.workflow
        run = _header_id(headers, RUN_HEADER) or principal.run
        shape = (principal.tenant, principal.key_name, workflow, run)
        path = self._paths.get(shape)
        if path is None:
            if len(self._paths) >= _MEMO_SIZE:
                self._paths.clear()
            scopes = charge_scopes(*shape)
            path = self._paths[shape] = ChargePath(workflow, run, scopes, tuple(map(str, scopes)))
        return path

    def is_budgeted(self, tenant: str, key_name: str) -> bool:
        memo = self._memo()
        budgeted: bool | None = memo.get((tenant, key_name))
        if budgeted is None:
            t = self.registry.tenants.get(tenant)
            key_budget = t and next((k.budget for k in t.keys if k.name == key_name), None)
            budgeted = memo[tenant, key_name] = t is not None and any(
                (t.budget, t.workflow_budget, t.run_budget, key_budget)
            )
        return budgeted

    async def reserve(
        self,
        request_id: str,
        path: ChargePath,
        amount: Amount,
        price: Pricing,
        now: float,
        *,
        choices: int = 1,
        owner: object | None = None,
    ) -> Admission:
        """Hold ``amount`` on every budgeted scope of ``path``; returns what was held.

        When the worst case does not fit but the prompt and at least
        ``MIN_PARTIAL_OUTPUT`` tokens of output for each of its ``choices`` do, a
        smaller output is held (the caller then caps the request's ``max_tokens`` to
        the held output over ``choices``): a run near the end of its budget gets a
        shorter answer instead of none. Otherwise: a 429. A run past its wall time
        gets a 429 too; one within it, the deadline. The hold lasts while ``owner``
        lives (or its TTL when None) until ``settle``.
        """
        scopes = self._open(path, now)
        if not scopes:
            return Admission(amount)
        deadline, run = await self._deadline(scopes, now)
        held = await self._hold_or_lease(request_id, scopes, amount, price, now, choices)
        if owner is not None:
            self._running[request_id] = weakref.ref(owner)
        return Admission(held, deadline, run)

    async def _hold_or_lease(
        self,
        request_id: str,
        scopes: list[Scope],
        amount: Amount,
        price: Pricing,
        now: float,
        choices: int = 1,
    ) -> Amount:
        # Expiry is for holds whose request is gone without settling (a bug): a running
        # request's hold stays however long it takes (``_running``).
        ttl = self.config.gateway.read_timeout_s * 4
        if now < self._valid_until and self._hold(request_id, scopes, amount, now, ttl):
            return amount  # the hot path: what this process has leased covers it
        async with self._lock:
            if now >= self._valid_until:
                self._new_epoch()
            elif self._hold(request_id, scopes, amount, now, ttl):
                return amount  # a lease taken for another request made room
            results = await self._lease(scopes, amount, now)
            if self._hold(request_id, scopes, amount, now, ttl):
                return amount
            prompt = amount.input_tokens
            base = Amount(
                input_tokens=prompt, calls=amount.calls, cost_micros=price.cost_micros(prompt, 0)
            )
            # One more output token for each choice, its cost bounded above, so that k
            # tokens a choice surely fit.
            unit = Amount(
                output_tokens=choices, cost_micros=math.ceil(price.output_per_1m * choices)
            )
            most = self._fit(scopes, results, base, unit, now)
            if most is not None and MIN_PARTIAL_OUTPUT <= most < amount.output_tokens // choices:
                smaller = Amount(
                    input_tokens=prompt,
                    output_tokens=most * choices,
                    calls=amount.calls,
                    cost_micros=price.cost_micros(prompt, most * choices),
                )
                await self._lease(scopes, smaller, now)
                if self._hold(request_id, scopes, smaller, now, ttl):
                    return smaller
            raise _refusal(self._refused(scopes, results, amount, now))

    async def _deadline(self, scopes: list[Scope], now: float) -> tuple[float | None, Scope | None]:
        """When the run on the path runs out of wall time; a 429 if it has."""
        run = scopes[-1]
        budget = self._budget_of(run)
        if run.kind != "run" or budget is None or budget.wall_time_s is None:
            return None, None
        started = self._run_started.get(run)
        if started is None:
            assert self._leases is not None, "budgets need the usage ledger"
            started = await self._db(self._leases.run_started, str(run), now)
            self._run_started[run] = started
        deadline = started + budget.wall_time_s
        if now >= deadline:
            raise wall_time_refusal(run, budget.wall_time_s, started)
        return deadline, run

    async def retry(self, request_id: str, path: ChargePath, now: float) -> None:
        """Hold one more retry for a request about to try another backend; a 429 when
        a budget on its path has no retry left."""
        scopes = self._open(path, now)
        holds = self._retry_holds.setdefault(request_id, [])
        hold_id = f"{request_id}/retry{len(holds) + 1}"
        one = Amount(retries=1)
        try:
            await self._hold_or_lease(hold_id, scopes, one, Pricing(), now)
        except OpenAIError:
            if not holds:
                del self._retry_holds[request_id]
            raise
        holds.append(hold_id)
        owner = self._running.get(request_id)
        if owner is not None:
            self._running[hold_id] = owner

    def wall_time_of(self, run: Scope) -> float:
        budget = self._budget_of(run)
        assert budget is not None and budget.wall_time_s is not None
        return budget.wall_time_s

    def settle(self, request_id: str, path: ChargePath, actual: Amount, now: float) -> Charge:
        """Replace a request's hold by what it used; returns what the ledger must record."""
        accounts = self.book.accounts
        for hold_id in self._retry_holds.pop(request_id, ()):
            self.book.settle(hold_id, path.scopes, Amount(), now)  # ``actual`` counts them
            self._running.pop(hold_id, None)
        self.book.settle(request_id, path.scopes, actual, now)
        self._running.pop(request_id, None)
        leased = tuple(n for s, n in zip(path.scopes, path.names, strict=True) if s in accounts)
        return Charge(actual, path.names, self.holder, leased)

    async def refresh(self, tenant: str, now: float) -> None:
        """A tenant's budgets changed: give back what is leased for its scopes and not held,
        so the next request leases under the new limits."""
        async with self._lock:
            scopes = [s for s in self.book.accounts if s.id.split("/", 1)[0] == tenant]
            await self._give_back(scopes, now)
            for scope in scopes:
                budget = self._budget_of(scope)
                if budget is None:
                    del self.book.accounts[scope]
                else:
                    # Dimensions the budget gained start with nothing leased.
                    old = dict(self.book.accounts[scope].limits.items())
                    self.book.accounts[scope].limits = budget.limits().like(old)

    async def tick(self, now: float) -> None:
        """Expire holds of requests that never settled, keep leases alive, give back
        what idle scopes lease, forget scopes idle for long."""
        running = {rid for rid, owner in self._running.items() if owner() is not None}
        for rid in self.book.expire(now, keep=running):
            self._running.pop(rid, None)
        if self._leases is None:
            return
        if now >= self._next_heartbeat:
            try:
                await self._heartbeat(now)
            except OpenAIError as exc:
                log.warning("budget lease heartbeat failed: %s", exc.message)
        idle = [s for s, last in self._last_used.items() if now - last > _IDLE_GIVE_BACK_S]
        if not idle:
            return
        async with self._lock:
            try:
                await self._give_back(idle, now)
            except OpenAIError as exc:
                log.warning("idle budget leases not given back: %s", exc.message)
                return
            forgotten = []
            for scope in idle:
                account = self.book.accounts.get(scope)
                if now - self._last_used[scope] > _IDLE_EVICT_S and not (
                    account and self.book.held_on(account)
                ):
                    self.book.accounts.pop(scope, None)
                    self._run_started.pop(scope, None)
                    del self._last_used[scope]
                    forgotten.append(str(scope))
            if forgotten:
                # Its usage was committed long ago: the lease rows are done with.
                await self._db(self._leases.forget, self.holder, forgotten)

    # -- internals -----------------------------------------------------------

    def _open(self, path: ChargePath, now: float) -> list[Scope]:
        """The budgeted scopes of ``path``, each with a local account (nothing leased yet
        for one not seen before)."""
        scopes = []
        for scope in path.scopes:
            budget = self._budget_of(scope)
            if budget is None:
                continue
            scopes.append(scope)
            self._last_used[scope] = now
            if scope not in self.book.accounts:
                # Leases are headroom, whatever the window: the database applies windows.
                self.book.open(scope, budget.limits().like({}))
        return scopes

    def _hold(
        self, request_id: str, scopes: list[Scope], amount: Amount, now: float, ttl: float
    ) -> bool:
        return isinstance(self.book.reserve(request_id, scopes, amount, now, ttl), Granted)

    async def _lease(
        self, scopes: list[Scope], amount: Amount, now: float
    ) -> dict[Scope, LeaseResult]:
        """Ask the database for what ``amount`` needs beyond what is leased, in one trip."""
        assert self._leases is not None, "budgets need the usage ledger"
        asked: list[Scope] = []
        requests = []
        for scope in sorted(scopes, key=str):
            account = self.book.accounts[scope]
            budget = self._budget_of(scope)
            assert budget is not None
            limits = budget.limits()
            ask = lease_ask(limits, account.limits, account.spent + account.reserved, amount)
            if ask is None:
                continue
            start = budget.window.start(now)
            since_hour = int(start // 3600) * 3600 if math.isfinite(start) else -(2**62)
            asked.append(scope)
            requests.append(LeaseRequest(str(scope), limits, since_hour, ask))
        if not requests:
            return {}
        results = await self._db(self._leases.lease, self.holder, requests, now, self._ttl_s)
        for scope, result in zip(asked, results, strict=True):
            account = self.book.accounts[scope]
            if result.created and any(v for _, v in account.limits.items()):
                # Our lease was gone (expired while we could not reach the database):
                # what was spent under it is the database's business now.
                log.warning("budget lease of %s was lost and is taken anew", scope)
                account.spent = Amount()
            account.limits = account.limits.like(result.total)
        return dict(zip(asked, results, strict=True))

    def _fit(
        self,
        scopes: list[Scope],
        results: dict[Scope, LeaseResult],
        base: Amount,
        unit: Amount,
        now: float,
    ) -> int | None:
        """The most output tokens that fit what is leased plus what is still free."""
        most: int | None = None
        for scope in scopes:
            room = self.book.accounts[scope].room(now)
            result = results.get(scope)
            if result is not None and not result.grant.ok:
                room = {d: r + max(0, result.grant.available[d]) for d, r in room.items()}
            k = units_that_fit(room, base, unit)
            if k is None:
                return None
            most = k if most is None else min(most, k)
        return most

    def _refused(
        self, scopes: list[Scope], results: dict[Scope, LeaseResult], amount: Amount, now: float
    ) -> Refused:
        for scope in scopes:
            result = results.get(scope)
            if result is None or result.grant.refused is None:
                continue
            dimension = result.grant.refused
            budget = self._budget_of(scope)
            assert budget is not None
            limit = budget.limits().get(dimension) or 0
            free = max(0, result.grant.available[dimension])
            free += max(0, self.book.accounts[scope].room(now)[dimension])
            return Refused(scope, dimension, limit, limit - free, amount.get(dimension))
        # Leased, yet it does not fit (a limit lowered under us, say): report the local view.
        for scope in scopes:
            refused = self.book.accounts[scope].check(amount, now)
            if refused is not None:
                return refused
        raise AssertionError("a request that fits was refused")

    async def _give_back(self, scopes: list[Scope], now: float) -> None:
        """Return what ``scopes`` lease and do not hold (caller holds the lock)."""
        if self._leases is None:
            return
        returns = []
        for scope in scopes:
            account = self.book.accounts.get(scope)
            if account is None:
                continue
            spare = {d: r for d, r in account.room(now).items() if r > 0}
            if spare:
                returns.append((str(scope), spare))
                account.limits = account.limits.like(
                    {d: v - spare.get(d, 0) for d, v in account.limits.items()}
                )
        if returns:
            await self._db(self._leases.give_back, self.holder, returns)

    def _new_epoch(self) -> None:
        """Stop trusting the leases held: their database rows may have expired. Requests
        in flight keep their holds, which the next lease must cover."""
        self._epoch += 1
        self._holder = ""
        for account in self.book.accounts.values():
            account.limits = account.limits.like({})
            account.spent = Amount()  # spent under the old leases: the database's now

    async def _heartbeat(self, now: float) -> None:
        assert self._leases is not None
        sent = time.time()
        await self._db(self._leases.heartbeat, self.holder, now + self._ttl_s)
        # Before the database may expire them, this process stops trusting them.
        self._valid_until = sent + self._ttl_s * 2 / 3
        self._next_heartbeat = now + self._ttl_s / 6

    async def _db(self, call: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking lease call beside the event loop; database trouble is a 503."""
        assert self._leases is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call, *args)
        except self._leases.database.errors as exc:
            raise OpenAIError(
                503,
                f"The budget store ({self._leases.database.describe()}) is unavailable: {exc}",
                "budget_store_unavailable",
            ) from None

    def _memo(self) -> dict[Scope | tuple[str, str], Any]:
        """The budgets remembered, forgotten whenever the tenants change."""
        if self._version != self.registry.version or len(self._budgets) >= _MEMO_SIZE:
            self._budgets.clear()
            self._version = self.registry.version
        return self._budgets

    def _budget_of(self, scope: Scope) -> Budget | None:
        memo = self._memo()
        try:
            budget: Budget | None = memo[scope]
        except KeyError:
            budget = memo[scope] = self._lookup_budget(scope)
        return budget

    def _lookup_budget(self, scope: Scope) -> Budget | None:
        tenant_name, _, rest = scope.id.partition("/")
        tenant = self.registry.tenants.get(tenant_name)
        if tenant is None:
            return None
        if scope.kind == "tenant":
            return tenant.budget
        if scope.kind == "key":
            return next((k.budget for k in tenant.keys if k.name == rest), None)
        if scope.kind == "workflow":
            return tenant.workflow_budget
        return tenant.run_budget


def wall_time_refusal(run: Scope, wall_time_s: float, started: float) -> OpenAIError:
    """A run past its wall time: before a request, or when one is cut at the deadline."""
    return OpenAIError(
        429,
        f"Budget of {run} exhausted: its wall time of {wall_time_s:g} s, counted from its "
        f"first request at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started))}, "
        "is over.",
        "budget_exceeded",
        headers={
            "x-inferplane-budget-scope": str(run),
            "x-inferplane-budget-dimension": "wall_time_s",
            "x-inferplane-budget-remaining": "0",
            "x-should-retry": "false",
        },
    )


def _refusal(refused: Refused) -> OpenAIError:
    return OpenAIError(
        429,
        f"Budget of {refused.scope} exhausted: {refused.dimension} would reach "
        f"{refused.used + refused.requested} of {refused.limit} "
        f"({refused.remaining} remaining, this request needs up to {refused.requested}).",
        "budget_exceeded",
        headers={
            "x-inferplane-budget-scope": str(refused.scope),
            "x-inferplane-budget-dimension": refused.dimension,
            "x-inferplane-budget-remaining": str(refused.remaining),
            # Waiting does not refill a budget: tell the openai client not to retry.
            "x-should-retry": "false",
        },
    )
