"""Budgets at the door: which scopes a request is charged to, its worst case, 429 when it won't fit.

A request is charged to every budgeted scope on its path: tenant, key,
workflow and run (the last two from ``X-Inferplane-Workflow`` and
``X-Inferplane-Run``). Before dispatch it holds its worst case (counted
prompt tokens + ``max_tokens``, one call, their price); when it ends, the
hold is replaced by its actual usage. Holds of requests that never ended
expire. The arithmetic is ``policy.Book``; spend survives restarts because it
is rebuilt from the usage ledger for the current window when an account opens.

Single process for now: several gateways sharing PostgreSQL come with leases.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inferplane.config import Budget, Config, Model, Pricing
from inferplane.gateway._auth import Registry
from inferplane.ledger import Ledger
from inferplane.perf import count_chat_tokens, count_text_tokens
from inferplane.policy import Amount, Book, Refused, Scope
from inferplane.wire import OpenAIError

__all__ = [
    "MIN_PARTIAL_OUTPUT",
    "RUN_HEADER",
    "WORKFLOW_HEADER",
    "BudgetGate",
    "ChargePath",
    "worst_case",
]

WORKFLOW_HEADER = "x-inferplane-workflow"
RUN_HEADER = "x-inferplane-run"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# The least output worth answering with when a budget can no longer fit the worst case.
MIN_PARTIAL_OUTPUT = 16
# Runs and workflows nobody used for this long leave memory (their spend stays in the ledger).
_IDLE_EVICT_S = 3600.0


@dataclass(frozen=True, slots=True)
class ChargePath:
    """Where a request's usage is charged."""

    workflow: str | None
    run: str | None
    scopes: tuple[Scope, ...]


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


def worst_case(body: dict[str, Any], operation: str, model: Model) -> Amount:
    """The most a request can use: its prompt, counted, and all the output it may ask for."""
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
    return Amount(
        input_tokens=prompt,
        output_tokens=output,
        calls=1,
        cost_micros=model.price.cost_micros(prompt, output),
    )


class BudgetGate:
    def __init__(self, config: Config, registry: Registry, ledger: Ledger) -> None:
        self.config = config
        self.registry = registry
        self.ledger = ledger
        self.book = Book()
        self._last_used: dict[Scope, float] = {}

    def path(self, tenant: str, key_name: str, headers: Mapping[str, str]) -> ChargePath:
        workflow = _header_id(headers, WORKFLOW_HEADER)
        run = _header_id(headers, RUN_HEADER)
        scopes = [Scope("tenant", tenant), Scope("key", f"{tenant}/{key_name}")]
        if workflow is not None:
            scopes.append(Scope("workflow", f"{tenant}/{workflow}"))
        if run is not None:
            scopes.append(Scope("run", f"{tenant}/{workflow or '-'}/{run}"))
        return ChargePath(workflow, run, tuple(scopes))

    def is_budgeted(self, tenant: str, key_name: str) -> bool:
        t = self.registry.tenants.get(tenant)
        if t is None:
            return False
        key_budget = next((k.budget for k in t.keys if k.name == key_name), None)
        return any((t.budget, t.workflow_budget, t.run_budget, key_budget))

    def reserve(
        self, request_id: str, path: ChargePath, amount: Amount, price: Pricing, now: float
    ) -> Amount:
        """Hold ``amount`` on every budgeted scope of ``path``; returns what was held.

        When the worst case does not fit but the prompt and at least
        ``MIN_PARTIAL_OUTPUT`` tokens of output do, a smaller output is held
        (the caller then caps the request's ``max_tokens``): a run near the end of
        its budget gets a shorter answer instead of none. Otherwise: a 429.
        """
        for scope in path.scopes:
            self._ensure_open(scope, path, now)
        # A hold outlives the longest a request may legitimately take.
        ttl = self.config.gateway.read_timeout_s * 4
        decision = self.book.reserve(request_id, path.scopes, amount, now, ttl)
        if not isinstance(decision, Refused):
            return amount
        prompt = amount.input_tokens
        base = Amount(
            input_tokens=prompt, calls=amount.calls, cost_micros=price.cost_micros(prompt, 0)
        )
        # An upper bound of one more output token's cost, so that k tokens surely fit.
        unit = Amount(output_tokens=1, cost_micros=math.ceil(price.output_per_1m))
        most = self.book.fit(path.scopes, base, unit, now)
        if most is not None and MIN_PARTIAL_OUTPUT <= most < amount.output_tokens:
            smaller = Amount(
                input_tokens=prompt,
                output_tokens=most,
                calls=amount.calls,
                cost_micros=price.cost_micros(prompt, most),
            )
            if not isinstance(
                self.book.reserve(request_id, path.scopes, smaller, now, ttl), Refused
            ):
                return smaller
        raise _refusal(decision)

    def settle(self, request_id: str, path: ChargePath, actual: Amount, now: float) -> None:
        self.book.settle(request_id, path.scopes, actual, now)

    def refresh(self, tenant: str, now: float) -> None:
        """Apply a tenant's changed budgets to its open accounts.

        Spend is rebuilt from the ledger for the (possibly new) window; holds of
        requests in flight carry over, so nothing in flight is forgotten."""
        for scope in [s for s in self.book.accounts if s.id.split("/", 1)[0] == tenant]:
            old = self.book.accounts.pop(scope)
            self._ensure_open(scope, _path_of(scope), now)
            new = self.book.accounts.get(scope)
            if new is not None:
                for request_id, hold in old.held.items():
                    new.hold(request_id, hold.amount, hold.expires_at)

    def tick(self, now: float) -> None:
        """Expire holds of requests that never settled; forget idle runs and workflows."""
        self.book.expire(now)
        for scope, last in list(self._last_used.items()):
            account = self.book.accounts.get(scope)
            if now - last > _IDLE_EVICT_S and (account is None or not account.held):
                self.book.accounts.pop(scope, None)
                del self._last_used[scope]

    def _ensure_open(self, scope: Scope, path: ChargePath, now: float) -> None:
        if scope.kind in ("workflow", "run"):
            self._last_used[scope] = now
        if scope in self.book.accounts:
            return
        budget = self._budget_of(scope)
        if budget is None:
            return
        self.book.open(scope, budget.limits(), budget.window)
        account = self.book.accounts[scope]
        account.roll(now)
        tenant, _, rest = scope.id.partition("/")
        match: dict[str, str | None] = {"tenant": tenant}
        if scope.kind == "key":
            match["key_name"] = rest
        elif scope.kind == "workflow":
            match["workflow"] = rest
        elif scope.kind == "run":
            match["workflow"], match["run"] = path.workflow, path.run
        inp, out, calls, cost = self.ledger.spend(account.window_start, **match)
        # In a rolling window this counts the whole loaded spend as recent: it leaves the
        # window later than it should, never earlier, so nothing is over-admitted.
        account.record(
            Amount(input_tokens=inp, output_tokens=out, calls=calls, cost_micros=cost), now
        )

    def _budget_of(self, scope: Scope) -> Budget | None:
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


def _path_of(scope: Scope) -> ChargePath:
    """The charge path that opened ``scope`` (inverse of ``BudgetGate.path`` for one scope)."""
    rest = scope.id.partition("/")[2]
    if scope.kind == "run":
        workflow, _, run = rest.partition("/")
        return ChargePath(None if workflow == "-" else workflow, run, (scope,))
    if scope.kind == "workflow":
        return ChargePath(rest, None, (scope,))
    return ChargePath(None, None, (scope,))


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
