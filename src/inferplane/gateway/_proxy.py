"""Forwarding one OpenAI request to a backend and relaying the answer, streamed or whole.

Guarantees: the client always gets either the backend's answer or an OpenAI
error (before the first byte) or a final SSE error event (after it); it never
hangs past the read timeout; a backend that refuses connections is skipped and
the next one tried, which is safe because nothing reached it. Usage is always
measured: for streams the gateway asks the backend for the usage chunk and
hides it again when the client did not ask for it.

Hedging (SLO classes with ``hedge: true``): when the first attempt has no first
byte after the model's observed p95 (``policy.LatencyTracker``), a second
attempt goes to another replica whose breaker is closed; the first of the two
to answer is relayed, the other is cancelled (its connection closed, so the
engine aborts). It is a retry for every account: the model's retry budget, the
run's ``retries`` budget (no hedge when either is spent), the usage row's
``retries``; the row names the backend that won and carries its usage only
(the loser never reported any, and its engine time is not charged).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response

from inferplane.asgi import EventStreamResponse
from inferplane.config import Backend, GatewaySettings, Model, Pricing, PricingMode
from inferplane.gateway._auth import Principal
from inferplane.gateway._budgets import BudgetGate, ChargePath, wall_time_refusal
from inferplane.gateway._pricing import HourlyPricing
from inferplane.gateway._queue import ModelQueue
from inferplane.gateway._race import Attempt, discard, first_answer, prime_stream
from inferplane.gateway._upstream import (
    Upstream,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)
from inferplane.ledger import Charge, Ledger, LedgerWriteError, UsageEvent
from inferplane.policy import (
    Amount,
    BreakerState,
    Health,
    LatencyTracker,
    QueueItem,
    RetryBudget,
    Router,
    Scope,
)
from inferplane.telemetry import GatewayMetrics
from inferplane.wire import (
    DONE,
    SSE_HEADERS,
    OpenAIError,
    SSEDecoder,
    error_event,
    sse_data,
    sse_payload,
)

__all__ = ["CAP_HEADER", "Exchange", "ModelRoute", "Proxy"]

CAP_HEADER = "x-inferplane-budget-capped-output-tokens"

log = logging.getLogger("inferplane.gateway")


@dataclass
class ModelRoute:
    """A logical model: its backends and the policies choosing between them."""

    name: str
    backends: list[Backend]
    router: Router
    auth_headers: list[dict[str, str]]
    hourly: HourlyPricing | None  # self-hosted prices, for ``pricing: per_hour``
    retry_budget: RetryBudget
    # Observed times from sending an attempt to its first byte: streamed (True) and
    # whole (False) answers apart, since a whole answer's first byte is its last.
    first_byte: dict[bool, LatencyTracker] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, model: Model, settings: GatewaySettings) -> ModelRoute:
        headers = []
        for backend in model.backends:
            h = {"content-type": "application/json"}
            if backend.api_key_env and (secret := os.environ.get(backend.api_key_env)):
                h["authorization"] = f"Bearer {secret}"
            headers.append(h)
        hourly = HourlyPricing(model) if model.pricing is PricingMode.PER_HOUR else None
        n = len(model.backends)
        health = Health(
            n,
            consecutive_errors=settings.outlier_consecutive_errors,
            base_ejection_s=settings.backend_cooldown_s,
            max_ejection_s=settings.max_ejection_s,
        )
        budget = RetryBudget(settings.retry_budget_ratio, settings.retry_budget_min)
        router = Router(health, model.routing, [b.weight for b in model.backends])
        first_byte = {
            streamed: LatencyTracker(
                min_samples=settings.hedge_min_samples,
                min_delay_s=settings.hedge_min_delay_s,
                max_delay_s=settings.hedge_max_delay_s,
            )
            for streamed in (True, False)
        }
        return cls(name, model.backends, router, headers, hourly, budget, first_byte)

    def first_token_s(self, stream: bool) -> float | None:
        """The median time from dispatch to a first byte, once enough are observed."""
        return self.first_byte[stream].typical()

    def price(self, model: Model) -> Pricing:
        """Per-token prices to hold a request's worst case with."""
        return model.price if self.hourly is None else self.hourly.worst()


@dataclass(slots=True, weakref_slot=True)  # the budget gate watches it while it holds
class Exchange:
    """One forwarded request: who asked, and what the gateway learned as it went."""

    request_id: str  # the gateway's, unique
    principal: Principal
    model: str
    operation: str
    labels: tuple[str, str, str]
    charge: ChargePath
    price: Pricing
    hourly: HourlyPricing | None = None  # price from the answering replica's hour instead
    held: Amount | None = None  # the worst case held on budgets, None when unbudgeted
    output_cap: int | None = None  # max_tokens lowered to fit a budget (a partial grant)
    deadline: float | None = None  # unix time its run's wall-time budget runs out
    deadline_scope: Scope | None = None
    slo_class: str | None = None
    ttft_target_s: float | None = None  # its class's TTFT target
    hedge: bool = False  # its class hedges
    queue: ModelQueue | None = None  # the model's queue, when its replicas have slots
    slot: int | None = None  # the replica whose slot it holds
    route: ModelRoute | None = None
    backend_index: int | None = None  # which of the route's backends answered
    affinity_key: str = ""  # prompt prefix or session, for affinity routing
    size_tokens: int = 1  # its expected tokens, for load-aware routing
    dispatched_at: float = 0.0  # monotonic
    sent_at: float | None = None  # perf_counter when the answering attempt was sent
    first_byte_s: float | None = None  # a whole answer's time from sent_at to its body
    arrival: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    backend: str | None = None
    status: int = 200
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None
    retries: int = 0
    # It holds a share of the model's retry budget (a retry after a 5xx, or a hedge);
    # a failover from a replica that did no work needs none.
    retry_share: bool = False
    ttft_s: float | None = None
    error_type: str | None = None
    client_request_id: str | None = None  # the client's own id, if it sent one
    charge_held: bool = False  # cut before its usage was known: charge the worst case held
    settled: bool = False


class Proxy:
    def __init__(
        self, upstream: Upstream, metrics: GatewayMetrics, ledger: Ledger, gate: BudgetGate
    ) -> None:
        self.upstream = upstream
        self.metrics = metrics
        self.ledger = ledger
        self.gate = gate

    def _settle(self, ex: Exchange) -> asyncio.Future[None]:
        """Account a request that ended, exactly once: metrics, budgets, the usage record.

        Returns the ledger's future: done once the record is committed."""
        assert not ex.settled, "settled twice"
        ex.settled = True
        if ex.slot is not None:
            assert ex.queue is not None and ex.slo_class is not None
            used = (ex.input_tokens or 0) + (ex.output_tokens or 0)
            ex.queue.served(ex.principal.tenant, ex.slo_class, ex.size_tokens, used)
            ex.queue.release(ex.slot, time.monotonic() - ex.dispatched_at, ex.size_tokens)
        if ex.route is not None:
            ex.route.retry_budget.ended(retried=ex.retry_share)
            if ex.backend_index is not None:
                ex.route.router.done(ex.backend_index, ex.size_tokens)
            if ex.backend_index is not None and ex.error_type in _BACKEND_FAULTS:
                ex.route.router.health.failed(ex.backend_index, time.monotonic())
        duration = time.perf_counter() - ex.t0
        self.metrics.finished(
            ex.labels,
            duration,
            ttft_s=ex.ttft_s,
            input_tokens=ex.input_tokens,
            output_tokens=ex.output_tokens,
            error_type=ex.error_type,
        )
        if ex.route is not None and ex.sent_at is not None and ex.error_type is None:
            if ex.ttft_s is not None:
                ex.route.first_byte[True].observe(ex.t0 + ex.ttft_s - ex.sent_at)
            elif ex.first_byte_s is not None:
                ex.route.first_byte[False].observe(ex.first_byte_s)
        if ex.ttft_target_s is not None and ex.slo_class is not None:
            met = _met_ttft(ex, ex.ttft_target_s, duration)
            if met is not None:
                self.metrics.slo(ex.model, ex.slo_class, met)
        if ex.hourly is not None and ex.backend is not None:
            # Measure first: the very first request is priced at its own pace.
            weighted = ex.hourly.weighted(ex.input_tokens or 0, ex.output_tokens or 0)
            ex.hourly.meters[ex.backend].finished(time.monotonic(), weighted)
            ex.price = ex.hourly.price(ex.backend, duration, weighted)
        actual = _actual_usage(ex)
        charge = Charge(actual, ex.charge.names)
        if ex.held is not None:
            charge = self.gate.settle(ex.request_id, ex.charge, actual, time.time())
        return self.ledger.append(
            UsageEvent(
                request_id=ex.request_id,
                time=ex.arrival,
                tenant=ex.principal.tenant,
                key_name=ex.principal.key_name,
                workflow=ex.charge.workflow,
                run=ex.charge.run,
                model=ex.model,
                backend=ex.backend,
                operation=ex.operation,
                status=ex.status,
                error_type=ex.error_type,
                input_tokens=ex.input_tokens,
                output_tokens=ex.output_tokens,
                ttft_s=ex.ttft_s,
                duration_s=duration,
                calls=actual.calls,
                cost_micros=actual.cost_micros,
                cached_tokens=ex.cached_tokens,
                finish_reason=ex.finish_reason,
                retries=ex.retries,
                slo_class=ex.slo_class,
                client_request_id=ex.client_request_id,
            ),
            charge,
        )

    async def forward(
        self, route: ModelRoute, path: str, body: dict[str, Any], raw: bytes, ex: Exchange
    ) -> Response:
        self.metrics.started(route.name)
        streamed = False
        try:
            stream = body.get("stream") is True
            hide_usage = False
            if stream:
                options = body.get("stream_options")
                if not (isinstance(options, dict) and options.get("include_usage") is True):
                    hide_usage = True
                    body["stream_options"] = {**(options or {}), "include_usage": True}
            ex.route = route
            route.retry_budget.started()
            if ex.queue is not None:
                try:
                    async with _until(ex.deadline):
                        await self._wait_for_slot(ex, route.first_token_s(stream))
                except TimeoutError:
                    # The run's wall time ran out in the queue: nothing was generated.
                    raise self._out_of_time(ex, charge_held=False) from None
            resp: UpstreamResponse | None = None
            try:
                async with _until(ex.deadline):
                    resp, backend, payload = await self._send(
                        route, path, body, raw, ex, rewrite=hide_usage, whole=not stream
                    )
                    ex.backend = backend.label
                    if resp.status >= 400:
                        raise await _upstream_refusal(resp, backend)
                    if stream and resp.content_type == "text/event-stream":
                        streamed = True
                        return EventStreamResponse(
                            self._relay(resp, ex, hide_usage),
                            headers=SSE_HEADERS,
                            on_abandon=lambda: self._abandon(resp, ex),
                        )
                    if payload is None:
                        payload = await resp.read()
            except TimeoutError:
                # The run's wall time ran out while the backend worked: stop it, charge
                # what was held (how much it generated is unknown), refuse.
                if resp is not None:
                    resp.close()
                raise self._out_of_time(ex) from None
            _read_usage(payload, ex)
        except OpenAIError as exc:
            ex.status, ex.error_type = exc.status, exc.code
            raise
        except UpstreamError as exc:
            refusal = _as_refusal(exc)
            ex.status, ex.error_type = refusal.status, refusal.code
            raise refusal from exc
        except asyncio.CancelledError:
            ex.status, ex.error_type = 499, "client_disconnected"  # nginx's code for it
            raise
        except Exception:
            ex.status, ex.error_type = 500, "internal_error"
            raise
        finally:
            if not streamed and ex.error_type is not None:
                self._settle(ex)
        # The answer goes out once its usage record is committed: what a client was
        # told happened is in the ledger, even if the gateway is killed right after.
        try:
            await self._settle(ex)
        except LedgerWriteError as exc:
            raise OpenAIError(503, f"{exc}; the answer is withheld.", "ledger_unavailable") from exc
        headers = {} if ex.output_cap is None else {CAP_HEADER: str(ex.output_cap)}
        return Response(
            payload, media_type=resp.content_type or "application/json", headers=headers
        )

    async def _wait_for_slot(self, ex: Exchange, first_token_s: float | None) -> None:
        assert ex.queue is not None and ex.slo_class is not None
        now = time.monotonic()
        item = QueueItem(ex.request_id, ex.principal.tenant, ex.slo_class, ex.size_tokens, now)
        ex.slot = await ex.queue.acquire(item, first_token_s)
        ex.dispatched_at = time.monotonic()

    def _out_of_time(self, ex: Exchange, *, charge_held: bool = True) -> OpenAIError:
        """The refusal of a request whose run's wall time ran out; ``charge_held``: a
        backend may have generated for it, how much is unknown, so it is charged what
        it held."""
        assert ex.deadline is not None and ex.deadline_scope is not None
        budget = self.gate.wall_time_of(ex.deadline_scope)
        ex.charge_held = charge_held
        return wall_time_refusal(ex.deadline_scope, budget, ex.deadline - budget)

    def _abandon(self, resp: UpstreamResponse, ex: Exchange) -> None:
        """The client left before its stream began: stop the backend, settle what is known."""
        resp.close()
        if not ex.settled:
            ex.error_type = "client_disconnected"
            self._settle(ex)

    async def _send(
        self,
        route: ModelRoute,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        ex: Exchange,
        *,
        rewrite: bool,
        whole: bool,
    ) -> tuple[UpstreamResponse, Backend, bytes | None]:
        """POST to a backend; on a refused connection, a connection lost before the answer
        began, or a 5xx (nothing has reached the client yet, so it is safe) try another.
        Each further attempt is a retry, charged to the request's budgets (which may
        refuse it); after a 5xx, only within the model's retry budget. A hedged request's
        first attempt races a second one after the hedge delay. Outcomes feed the
        breakers. For a ``whole`` answer the body is read here too (a replica can die
        between its headers and its body), and returned."""
        tried: set[int] = set()
        failure: OpenAIError | None = None
        answered_5xx = False
        delay = route.first_byte[not whole].hedge_delay() if ex.hedge else None
        while (i := self._pick(route, ex, tried)) is not None:
            if tried:
                # A 5xx may mean overload, where retries add to it: they need the budget.
                # A replica that refused or dropped the connection did no work: failover.
                if answered_5xx:
                    if not route.retry_budget.allow(ex.retry_share):
                        break
                    ex.retry_share = True
                if ex.held is not None:
                    await self.gate.retry(ex.request_id, ex.charge, time.time())
                ex.retries += 1
            tried.add(i)
            if delay is not None and len(tried) == 1 and _closed(route, i):
                attempt = await self._race(route, path, body, raw, ex, tried, delay, rewrite, whole)
            else:
                attempt = await self._attempt(route, i, path, body, raw, rewrite, whole, False)
            if attempt.failure is not None:
                failure, answered_5xx = attempt.failure, attempt.answered_5xx
                if answered_5xx:
                    ex.backend = route.backends[attempt.index].label
                continue
            assert attempt.resp is not None
            i = attempt.index
            route.router.health.succeeded(i)
            ex.backend_index = i
            ex.sent_at = attempt.sent_at
            if whole:
                ex.first_byte_s = attempt.first_byte_s  # a stream's is its first token
            route.router.sent(i, ex.size_tokens)
            return attempt.resp, route.backends[i], attempt.answer
        raise failure or OpenAIError(
            502, f"No backend of model '{route.name}' is available.", "upstream_unreachable"
        )

    async def _attempt(
        self,
        route: ModelRoute,
        i: int,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        rewrite: bool,
        whole: bool,
        prime: bool,
    ) -> Attempt:
        """One POST to backend ``i``, up to its answer's headers, or its whole body when
        ``whole``, or a stream's first token when ``prime``. Failures after which another
        backend may try are returned (and reported to the breaker); others raise."""
        health = route.router.health
        backend = route.backends[i]
        payload = raw
        upstream_model = backend.model or route.name
        if rewrite or body.get("model") != upstream_model:
            payload = orjson.dumps({**body, "model": upstream_model})
        attempt = Attempt(i, time.perf_counter())
        try:
            resp = await self.upstream.post(backend.url + path, payload, route.auth_headers[i])
        except UpstreamConnectError as exc:
            health.failed(i, time.monotonic(), refused=True)
            log.warning("backend %s of %s: %s", backend.label, route.name, exc)
            attempt.failure = OpenAIError(
                502,
                f"No backend of model '{route.name}' accepted a connection: {exc}",
                "upstream_unreachable",
            )
            return attempt
        except UpstreamDisconnected as exc:
            # It died with the request (a killed replica, say) before answering
            # anything: the client has nothing yet, so another replica may serve it.
            health.failed(i, time.monotonic())
            attempt.failure = _as_refusal(exc)
            return attempt
        except UpstreamError:
            health.failed(i, time.monotonic())
            raise
        except asyncio.CancelledError:
            health.abandoned(i)  # a deadline, a hedge lost, the client gone: no outcome
            raise
        if resp.status >= 500:
            health.failed(i, time.monotonic())
            try:
                attempt.failure = await _upstream_refusal(resp, backend)
            except UpstreamError as exc:  # its error body never came: still its fault
                resp.close()
                attempt.failure = OpenAIError(
                    502,
                    f"Model server {backend.label} failed ({resp.status}): {exc}",
                    "upstream_error",
                )
            attempt.answered_5xx = True
            log.warning("backend %s of %s answered %d", backend.label, route.name, resp.status)
            return attempt
        try:
            if whole and resp.status < 400:
                attempt.answer = await resp.read()
            elif prime and resp.status < 400 and resp.content_type == "text/event-stream":
                resp = await prime_stream(resp)
        except UpstreamDisconnected as exc:
            health.failed(i, time.monotonic())
            attempt.failure = _as_refusal(exc)
            return attempt
        except BaseException as exc:
            resp.close()
            if isinstance(exc, asyncio.CancelledError):
                health.abandoned(i)
            raise
        attempt.resp = resp
        attempt.first_byte_s = time.perf_counter() - attempt.sent_at
        return attempt

    async def _race(
        self,
        route: ModelRoute,
        path: str,
        body: dict[str, Any],
        raw: bytes,
        ex: Exchange,
        tried: set[int],
        delay_s: float,
        rewrite: bool,
        whole: bool,
    ) -> Attempt:
        """The first attempt of a hedged request: on the one replica in ``tried``, and
        after ``delay_s`` without a first byte, on a second one too; the first to answer
        wins and the other is cancelled."""
        (first,) = tried
        tasks = {
            asyncio.ensure_future(
                self._attempt(route, first, path, body, raw, rewrite, whole, True)
            ): first
        }
        spare: int | None = None  # the second's slot in the model's queue
        winner: Attempt | None = None
        try:
            done, _ = await asyncio.wait(tasks, timeout=delay_s)
            if not done:
                second = await self._hedge_target(route, ex, tried)
                if second is not None:
                    tried.add(second)
                    spare = second if ex.queue is not None else None
                    hedged = asyncio.ensure_future(
                        self._attempt(route, second, path, body, raw, rewrite, whole, True)
                    )
                    tasks[hedged] = second
                    self.metrics.hedged(route.name)
            winner = await first_answer(tasks)
            if winner.failure is None and winner.index != first:
                self.metrics.hedge_won(route.name)
            return winner
        finally:
            for task, index in tasks.items():
                if winner is None or winner.failure is not None or index != winner.index:
                    discard(task)
            if spare is not None:
                self._settle_spare(ex, spare, winner)

    async def _hedge_target(self, route: ModelRoute, ex: Exchange, tried: set[int]) -> int | None:
        """The replica for a hedge, taken, or None: a replica whose breaker is closed and
        (for a queued model) with a free slot, while the model's retry budget and the
        request's ``retries`` budgets allow one more attempt."""
        tokens = ex.size_tokens
        if ex.queue is not None:
            target = ex.queue.take_spare(tokens, tried)
        else:
            health = route.router.health
            shut = {i for i, b in enumerate(health.breakers) if b.state is not BreakerState.CLOSED}
            key = ex.affinity_key or ex.request_id
            target = route.router.choose(time.monotonic(), frozenset(tried | shut), key, tokens)
        if target is None:
            return None
        allowed = True
        try:
            if ex.held is not None:
                await self.gate.retry(ex.request_id, ex.charge, time.time())
        except OpenAIError:
            allowed = False  # the run's retries are spent: the first attempt goes on
        except BaseException:
            self._untake(ex, target)
            raise
        # Last, with no await after it: ``allow`` counts the request as retrying.
        if allowed and route.retry_budget.allow(ex.retry_share):
            ex.retry_share = True
            ex.retries += 1
            return target
        self._untake(ex, target)
        return None

    @staticmethod
    def _untake(ex: Exchange, target: int) -> None:
        if ex.queue is not None:
            ex.queue.release(target, 0.0, ex.size_tokens, measured=False)

    @staticmethod
    def _settle_spare(ex: Exchange, spare: int, winner: Attempt | None) -> None:
        """A hedge held a second slot in the model's queue: the loser's slot goes back."""
        assert ex.queue is not None and ex.slot is not None
        if winner is not None and winner.failure is None and winner.index == spare:
            ex.queue.release(ex.slot, 0.0, ex.size_tokens, measured=False)
            ex.slot, ex.dispatched_at = spare, time.monotonic()
        else:
            ex.queue.release(spare, 0.0, ex.size_tokens, measured=False)

    @staticmethod
    def _pick(route: ModelRoute, ex: Exchange, tried: set[int]) -> int | None:
        if ex.slot is not None:
            if not tried:
                return ex.slot  # the replica the queue gave a slot on
            # Failing over in a queued model: only to a replica with a free slot, which
            # the request takes in place of the one it had (the replicas' limits hold).
            assert ex.queue is not None
            spare = ex.queue.take_spare(ex.size_tokens, tried)
            if spare is not None:
                ex.queue.release(ex.slot, 0.0, ex.size_tokens, measured=False)
                ex.slot, ex.dispatched_at = spare, time.monotonic()
            return spare
        key = ex.affinity_key or ex.request_id
        return route.router.choose(time.monotonic(), frozenset(tried), key, ex.size_tokens)

    async def _relay(
        self, resp: UpstreamResponse, ex: Exchange, hide_usage: bool
    ) -> AsyncIterator[bytes]:
        """Pass SSE events through as they come, watching usage and the first token."""
        watch = _StreamWatch(ex, hide_usage)
        done = False
        decoder = SSEDecoder()
        pieces = resp.chunks()
        source = pieces if ex.deadline is None else _pieces_until(pieces, ex.deadline)
        try:
            async for piece in source:
                out: list[bytes] = []
                for event in decoder.feed(piece):
                    data = sse_payload(event)
                    if not data:
                        continue  # comments, keep-alives
                    if data == b"[DONE]":
                        done = True
                        break
                    verdict = watch.inspect(data)
                    if verdict is _Verdict.MALFORMED:
                        out.append(
                            error_event(
                                "The model server sent a malformed stream event.",
                                "upstream_malformed_stream",
                            )
                        )
                        break
                    if verdict is not _Verdict.DROP:
                        out.append(event + b"\n\n")
                    if verdict is _Verdict.LAST:
                        break
                if out:
                    yield b"".join(out)
                if done:
                    watch.finish()
                    try:
                        await self._settle(ex)  # committed before the client sees the end
                    except LedgerWriteError as exc:
                        yield error_event(str(exc), "ledger_unavailable")
                        return
                    if ex.output_cap is not None and (ex.output_tokens or 0) >= ex.output_cap:
                        yield _budget_stop_event(
                            ex,
                            "The budget of this request's tenant, key, workflow or run allowed "
                            f"{ex.output_cap} output tokens; the answer stops there.",
                        )
                    yield DONE
                    await _finish_quietly(pieces)
                    return
                if ex.error_type is not None:
                    return
            ex.error_type = "upstream_incomplete_stream"
            yield error_event(
                "The model server ended the stream before it was complete.", ex.error_type
            )
        except _DeadlineReached:
            # The run's wall time is over: stop the backend, end the stream as if the
            # output had hit its length, say why, and account what was streamed.
            resp.close()
            watch.finish()
            ex.finish_reason = "length"
            yield _length_event(ex) + _budget_stop_event(
                ex,
                f"The wall time of {ex.deadline_scope} ran out; the answer stops there.",
            )
            try:
                await self._settle(ex)
            except LedgerWriteError as exc:
                yield error_event(str(exc), "ledger_unavailable")
                return
            yield DONE
        except UpstreamError as exc:
            ex.error_type = (
                "upstream_timeout" if isinstance(exc, UpstreamTimeout) else "upstream_disconnected"
            )
            yield error_event(f"The model server failed mid-stream: {exc}", ex.error_type)
        except (asyncio.CancelledError, GeneratorExit):
            # The client left: while the relay waited on the backend (cancelled), or
            # while a chunk was being written to it (the response closes the relay).
            if not ex.settled:
                ex.error_type = "client_disconnected"
            raise
        finally:
            resp.close()
            if not ex.settled:
                watch.finish()
                self._settle(ex)


# How a request that reached a backend can end by the backend's fault (its breaker hears).
_BACKEND_FAULTS = frozenset(
    {
        "upstream_disconnected",
        "upstream_timeout",
        "upstream_malformed_stream",
        "upstream_incomplete_stream",
        "upstream_malformed_response",
    }
)


class _Verdict(enum.Enum):
    FORWARD = enum.auto()
    DROP = enum.auto()  # the usage chunk the gateway asked for on the client's behalf
    LAST = enum.auto()  # an error event from the backend: forward it and stop
    MALFORMED = enum.auto()


class _StreamWatch:
    """Learns usage, first-token time and errors from a stream's events.

    Decoding JSON per event would be the relay's largest cost, so an event is
    decoded only while the first token is still awaited or when it mentions
    usage or an error; the others get a cheap shape check.
    """

    __slots__ = ("ex", "hide_usage", "num_content_events")

    def __init__(self, ex: Exchange, hide_usage: bool) -> None:
        self.ex = ex
        self.hide_usage = hide_usage
        self.num_content_events = 0

    def finish(self) -> None:
        if self.ex.output_tokens is None and self.num_content_events:
            # A backend that never reported usage: one streamed event per token is what
            # vLLM, SGLang and TGI send, so count events (approximate).
            self.ex.output_tokens = self.num_content_events

    def inspect(self, data: bytes) -> _Verdict:
        if not (data.startswith(b"{") and data.endswith(b"}")):
            self.ex.error_type = "upstream_malformed_stream"
            return _Verdict.MALFORMED
        if (
            self.ex.ttft_s is not None
            and b'"usage"' not in data
            and b'"error"' not in data
            and (b'"finish_reason":null' in data or b'"finish_reason": null' in data)
        ):
            self.num_content_events += 1
            return _Verdict.FORWARD
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.ex.error_type = "upstream_malformed_stream"
            return _Verdict.MALFORMED
        if not isinstance(chunk, dict):
            return _Verdict.FORWARD
        if "error" in chunk:
            self.ex.error_type = "upstream_error"
            return _Verdict.LAST
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            _take_usage(usage, self.ex)
        choices = chunk.get("choices")
        if choices is not None and not isinstance(choices, list):
            self.ex.error_type = "upstream_malformed_stream"
            return _Verdict.MALFORMED
        _take_finish(choices, self.ex)
        if not choices:
            return _Verdict.DROP if self.hide_usage and usage is not None else _Verdict.FORWARD
        if _delta_text(choices[0]):
            self.num_content_events += 1
            if self.ex.ttft_s is None:
                self.ex.ttft_s = time.perf_counter() - self.ex.t0
        return _Verdict.FORWARD


async def _finish_quietly(pieces: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (the end of the chunked body) so the connection is reused.

    The client already has everything; a server that does not end its response
    promptly just loses its connection.
    """
    with contextlib.suppress(UpstreamError, TimeoutError):
        async with asyncio.timeout(1.0):
            async for _ in pieces:
                pass


def _chunk(ex: Exchange, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    """A stream event of the gateway's own, shaped as the backend's are."""
    chat = ex.operation == "chat"
    return sse_data(
        {
            "id": f"inferplane-{ex.request_id}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(ex.arrival),
            "model": ex.model,
            "choices": choices,
            **extra,
        }
    )


def _length_event(ex: Exchange) -> bytes:
    """The last content event of a stream the gateway cut: finish_reason ``length``."""
    if ex.operation == "chat":
        return _chunk(ex, [{"index": 0, "delta": {}, "finish_reason": "length"}])
    return _chunk(ex, [{"index": 0, "text": "", "finish_reason": "length"}])


def _budget_stop_event(ex: Exchange, message: str) -> bytes:
    """Why a stream ended early, as a chunk the openai client accepts: no choices (like the
    usage chunk), the explanation in an extra field (``chunk.model_extra``)."""
    stop = {"stopped_by": "budget", "output_tokens_granted": ex.output_cap, "message": message}
    return _chunk(ex, [], inferplane=stop)


class _DeadlineReached(Exception):
    """A run's wall-time budget ran out while its request streamed."""


async def _pieces_until(pieces: AsyncIterator[bytes], deadline: float) -> AsyncIterator[bytes]:
    """``pieces`` until the unix time ``deadline``, then ``_DeadlineReached``."""
    while True:
        remaining = deadline - time.time()
        if remaining <= 0:
            raise _DeadlineReached
        # Not asyncio.wait_for: on Python 3.11 it loses a cancellation (the client
        # leaving) that lands in the same turn as the piece it waited for.
        deadline_hit = asyncio.timeout(remaining)
        try:
            async with deadline_hit:
                piece = await anext(pieces)
        except StopAsyncIteration:
            return
        except TimeoutError:
            if deadline_hit.expired():
                raise _DeadlineReached from None
            raise
        yield piece


def _until(deadline: float | None) -> contextlib.AbstractAsyncContextManager[object]:
    """A timeout at the unix time ``deadline``; nothing when None."""
    if deadline is None:
        return contextlib.nullcontext()
    return asyncio.timeout(deadline - time.time())


def _closed(route: ModelRoute, i: int) -> bool:
    """Hedge only from a replica whose breaker is closed: a half-open one's request is its
    probe, which must end in an outcome, not a cancellation."""
    return route.router.health.breakers[i].state is BreakerState.CLOSED


def _met_ttft(ex: Exchange, target_s: float, duration_s: float) -> bool | None:
    """Did a request meet its class's TTFT target? A whole answer's first token comes
    with the answer. Refusals for its class and server failures miss it; the client's
    own errors, budgets and a client that left before the target count neither way."""
    if ex.ttft_s is not None:
        return ex.ttft_s <= target_s
    if ex.error_type is None and ex.status < 400:
        return duration_s <= target_s
    if ex.error_type == "slo_unattainable" or ex.status >= 500:
        return False
    if ex.error_type == "client_disconnected" and duration_s > target_s:
        return False
    return None


def _actual_usage(ex: Exchange) -> Amount:
    """What a request is charged: what it used when a backend answered (status < 400,
    streams cut short included), nothing when none did. A backend that answered but
    reported no usage is charged the prompt as counted at the door."""
    if ex.charge_held and ex.held is not None:
        return ex.held + Amount(retries=ex.retries)
    if ex.backend is None or ex.status >= 400:
        return Amount(retries=ex.retries)
    input_tokens = ex.input_tokens
    if input_tokens is None:
        input_tokens = ex.held.input_tokens if ex.held is not None else 0
    output_tokens = ex.output_tokens or 0
    return Amount(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        calls=1,
        retries=ex.retries,
        cost_micros=ex.price.cost_micros(input_tokens, output_tokens, ex.cached_tokens or 0),
    )


def _delta_text(choice: Any) -> str:
    if not isinstance(choice, dict):
        return ""
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _take_usage(usage: dict[str, Any], ex: Exchange) -> None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if isinstance(prompt, int):
        ex.input_tokens = prompt
    if isinstance(completion, int):
        ex.output_tokens = completion
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and isinstance(cached := details.get("cached_tokens"), int):
        ex.cached_tokens = cached


def _take_finish(choices: Any, ex: Exchange) -> None:
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        if isinstance(reason, str):
            ex.finish_reason = reason


def _read_usage(payload: bytes, ex: Exchange) -> None:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        ex.error_type = "upstream_malformed_response"
        raise OpenAIError(
            502, "The model server sent a response that is not JSON.", "upstream_malformed_response"
        ) from None
    if isinstance(obj, dict):
        if isinstance(obj.get("usage"), dict):
            _take_usage(obj["usage"], ex)
        _take_finish(obj.get("choices"), ex)


async def _upstream_refusal(resp: UpstreamResponse, backend: Backend) -> OpenAIError:
    """A backend's 4xx is the client's fault: pass it on (its code, else
    ``upstream_rejected``, never one that sends the request down the fallback chain).
    Its 5xx is ours: 502."""
    payload = await resp.read()
    message = payload[:500].decode(errors="replace")
    code = "upstream_rejected"
    try:
        body = orjson.loads(payload)
        error = body.get("error")
        if isinstance(error, dict):  # OpenAI's shape
            message = str(error.get("message", message))
            if isinstance(error.get("code"), str) and error["code"]:
                code = error["code"]
        elif isinstance(error, str):  # TGI's {"error": ..., "error_type": ...}
            message = error
        elif isinstance(body.get("message"), str):  # vLLM's and SGLang's {"object": "error", ...}
            message = body["message"]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if resp.status >= 500:
        return OpenAIError(
            502, f"Model server {backend.label} failed ({resp.status}): {message}", "upstream_error"
        )
    return OpenAIError(resp.status, message, code)


def _as_refusal(exc: UpstreamError) -> OpenAIError:
    if isinstance(exc, UpstreamTimeout):
        return OpenAIError(
            504, f"The model server did not answer in time: {exc}", "upstream_timeout"
        )
    return OpenAIError(502, f"The model server connection failed: {exc}", "upstream_disconnected")
