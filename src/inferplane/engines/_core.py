"""The continuous-batching core of an engine replica, as a plain object told the time.

This is the one implementation of engine scheduling in inferplane: the live
emulator drives it with the wall clock (asking for every step so it can stream
tokens), the twin drives it with a simulated clock. It does no I/O and reads no
clock; every call takes ``now`` and returns what happened.

The scheduling follows vLLM v1 (``vllm/v1/core/sched/scheduler.py``): one
token budget per step shared by decodes and chunked prefills, running requests
first, waiting requests admitted FCFS while KV blocks and sequence slots last,
and recompute preemption of the most recently admitted request when the KV
cache runs out. A step's duration comes from the performance model.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace

from inferplane.perf import PerfModel, StepShape

__all__ = [
    "Admitted",
    "EngineCore",
    "EngineLimits",
    "EngineRequest",
    "Event",
    "Finished",
    "Preempted",
    "Produced",
]


@dataclass(frozen=True)
class EngineLimits:
    """Scheduler limits of one replica (vLLM's flags of the same names)."""

    max_num_seqs: int = 256
    # vLLM v1's default for its OpenAI server on large GPUs.
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    enable_chunked_prefill: bool = True
    # None: derived from the performance model (free memory / KV bytes per token).
    kv_capacity_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.block_size < 1:
            raise ValueError("engine limits must be positive")
        if self.kv_capacity_tokens is not None and self.kv_capacity_tokens < self.block_size:
            raise ValueError("kv_capacity_tokens must hold at least one block")


@dataclass(frozen=True, slots=True)
class EngineRequest:
    """What the engine needs to know of a request: its size, not its text."""

    request_id: str
    num_prompt_tokens: int
    num_output_tokens: int  # generation stops after this many tokens


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request joined the running batch (again, after a preemption) at ``time``."""

    request_id: str
    time: float


@dataclass(frozen=True, slots=True)
class Produced:
    """``num_tokens`` new output tokens of one request, the last at ``time``."""

    request_id: str
    num_tokens: int
    time: float


@dataclass(frozen=True, slots=True)
class Finished:
    request_id: str
    time: float
    num_output_tokens: int


@dataclass(frozen=True, slots=True)
class Preempted:
    """The request lost its KV cache and went back to the waiting queue."""

    request_id: str
    time: float


Event = Admitted | Produced | Finished | Preempted


@dataclass(slots=True, eq=False)  # identity: removing one from a list must not compare fields
class _Seq:
    req: EngineRequest
    num_tokens: int  # prompt + output tokens known so far
    num_computed: int = 0  # tokens whose KV is in the cache
    num_output: int = 0
    num_blocks: int = 0


@dataclass(slots=True)
class _Step:
    start: float
    end: float
    chunks: list[tuple[_Seq, int]] = field(default_factory=list)  # (sequence, tokens computed)


class EngineCore:
    """Continuous batching over a performance model; time only moves when told.

    Guarantees: steps never overlap; a step's batch is fixed at its start, so a
    request added at ``now`` never joins a step that began before ``now``;
    used KV blocks never exceed the capacity; every request added is either
    finished, aborted or still held.
    """

    def __init__(
        self, perf: PerfModel, limits: EngineLimits | None = None, *, every_token: bool = True
    ) -> None:
        """``every_token=False`` reports only each request's first token (``Produced``
        with 1 token) and its ``Finished`` (with the total): what a simulation needs for
        TTFT, TPOT and e2e, without an event per generated token."""
        self.perf = perf
        self.limits = limits or EngineLimits()
        self.every_token = every_token
        capacity = self.limits.kv_capacity_tokens
        if capacity is None:
            capacity = perf.kv_capacity_tokens
        self.num_blocks = capacity // self.limits.block_size
        if self.num_blocks < 1:
            raise ValueError("no KV cache left for this model on this GPU and TP degree")
        self.num_free_blocks = self.num_blocks
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []
        self._seqs: dict[str, _Seq] = {}
        self._step: _Step | None = None  # the step in flight, batch pinned at its start
        self._time = 0.0  # start of the next step when busy
        self._outbox: list[Event] = []

    # -- state read by drivers and metrics ---------------------------------

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction of KV blocks in use, 0..1 (vLLM's ``kv_cache_usage_perc``)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._seqs

    # -- driving -----------------------------------------------------------

    def add_request(self, req: EngineRequest, now: float) -> None:
        """Queue ``req`` arriving at ``now``; it can join the first step starting at or after."""
        if req.request_id in self._seqs:
            raise ValueError(f"duplicate request id {req.request_id!r}")
        if req.num_prompt_tokens < 1 or req.num_output_tokens < 1:
            raise ValueError("a request needs at least one prompt and one output token")
        needed = -(-(req.num_prompt_tokens + req.num_output_tokens) // self.limits.block_size)
        if needed > self.num_blocks:
            raise ValueError(f"request needs {needed} KV blocks, the replica has {self.num_blocks}")
        self._run_until(now)
        if not self._seqs:
            self._time = now
        seq = _Seq(req, num_tokens=req.num_prompt_tokens)
        self._seqs[req.request_id] = seq
        self._waiting.append(seq)

    def abort(self, request_id: str, now: float) -> None:
        """Drop a request (client gone). Its tokens in a step already in flight are wasted."""
        self._run_until(now)
        seq = self._seqs.pop(request_id, None)
        if seq is None:
            return
        if seq in self._waiting:
            self._waiting.remove(seq)
        else:
            self._running.remove(seq)
        self._free(seq)
        if self._step is not None:
            self._step.chunks = [(s, n) for s, n in self._step.chunks if s is not seq]

    def next_event_time(self) -> float | None:
        """End of the step in flight (planning it if needed), or None when idle."""
        if self._step is None and not self._plan():
            return None
        assert self._step is not None
        return self._step.end

    def advance(self, until: float) -> list[Event]:
        """Complete every step that ends at or before ``until``; return what happened."""
        self._run_until(until)
        events, self._outbox = self._outbox, []
        return events

    # -- internals ---------------------------------------------------------

    def _run_until(self, until: float) -> None:
        while True:
            if self._step is None and not self._plan():
                return
            step = self._step
            assert step is not None
            if step.end > until:
                return
            run = self._steady_run(step, until)
            if run is None:
                self._complete(step)
                self._time = step.end
            else:
                self._jump(step, *run)
            self._step = None

    # -- closed-form fast-forward -------------------------------------------
    #
    # Between state changes (an arrival, a finish, KV exhaustion) a decode-only batch
    # repeats the same step, each reading one more token of KV per sequence. The step
    # time is max(compute, memory) + fixed costs with compute and memory affine in the
    # KV read (PerfModel guarantees it), so k steps are summed in closed form and
    # applied at once: the twin crosses long decodes in one call per state change.

    def _steady_run(self, step: _Step, until: float) -> tuple[int, float] | None:
        """(k, end) when ``step`` and the next k - 1 steps form one unchanged decode
        batch ending at or before ``until``, with k >= 2; None otherwise."""
        chunks = step.chunks
        if len(chunks) != len(self._running) or len(chunks) == 0:
            return None
        for seq, n in chunks:
            if n != 1 or seq.num_output == 0:
                return None
        if self._admissible_head(len(chunks)):
            return None
        bound = min(seq.req.num_output_tokens - seq.num_output for seq, _ in chunks)
        bound = min(bound, self._kv_steps(chunks, bound))
        if bound < 2:
            return None
        cost = _StepSeries(self.perf, chunks)
        lo, hi = 1, bound  # the most steps that end by ``until``: T is increasing in k
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if step.start + cost.total(mid) <= until:
                lo = mid
            else:
                hi = mid - 1
        return (lo, step.start + cost.total(lo)) if lo >= 2 else None

    def _admissible_head(self, num_decodes: int) -> bool:
        """Could the head of the waiting queue join a coming step of this decode batch?

        If not now, then not before the batch changes: its free KV only shrinks."""
        if not self._waiting or len(self._running) >= self.limits.max_num_seqs:
            return False
        budget = self.limits.max_num_batched_tokens - num_decodes
        if budget <= 0:
            return False
        head = self._waiting[0]
        remaining = head.num_tokens - head.num_computed
        if not self.limits.enable_chunked_prefill and remaining > budget:
            return False
        n = min(remaining, budget) if self.limits.enable_chunked_prefill else remaining
        needed = -(-(head.num_computed + n) // self.limits.block_size) - head.num_blocks
        return needed <= self.num_free_blocks

    def _kv_steps(self, chunks: list[tuple[_Seq, int]], most: int) -> int:
        """The most steps (<= ``most``) whose KV blocks can all be allocated."""
        bs = self.limits.block_size

        def fits(k: int) -> bool:
            # k steps leave sequence i with num_computed + k tokens of KV.
            need = sum(max(0, -(-(s.num_computed + k) // bs) - s.num_blocks) for s, _ in chunks)
            return need <= self.num_free_blocks

        lo, hi = 1, most  # step 1 (the planned one) is allocated already
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _jump(self, step: _Step, k: int, end: float) -> None:
        """Apply k steps of an unchanged decode batch at once, as ``_complete`` would k
        times: each sequence gains k tokens, reported as one ``Produced`` at ``end``."""
        for seq, _ in step.chunks:
            seq.num_computed += k
            seq.num_tokens += k
            seq.num_output += k
            allocated = self._allocate(seq, seq.num_computed)
            assert allocated, "the run was sized to the free KV blocks"
            rid = seq.req.request_id
            if self.every_token:
                self._outbox.append(Produced(rid, k, end))
            if seq.num_output >= seq.req.num_output_tokens:
                self._running.remove(seq)
                del self._seqs[rid]
                self._free(seq)
                self._outbox.append(Finished(rid, end, seq.num_output))
        self._time = end

    def _plan(self) -> bool:
        """Fix the batch of the next step, vLLM v1 style; False when there is nothing to run."""
        if not self._seqs:
            return False
        budget = self.limits.max_num_batched_tokens
        chunks: list[tuple[_Seq, int]] = []
        preempted = False
        i = 0
        while i < len(self._running) and budget > 0:
            seq = self._running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self._allocate(seq, seq.num_computed + n):
                victim = self._running.pop()  # the most recently admitted
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    break
            else:
                chunks.append((seq, n))
                budget -= n
                i += 1
        # No admissions in a step that had to preempt (vLLM does the same).
        while (
            not preempted
            and self._waiting
            and budget > 0
            and len(self._running) < self.limits.max_num_seqs
        ):
            seq = self._waiting[0]
            remaining = seq.num_tokens - seq.num_computed
            # Without chunked prefill a prompt goes in whole; one larger than the budget
            # still runs, alone, rather than waiting forever.
            if not self.limits.enable_chunked_prefill and remaining > budget and chunks:
                break
            n = remaining if not self.limits.enable_chunked_prefill else min(remaining, budget)
            if not self._allocate(seq, seq.num_computed + n):
                break
            self._waiting.popleft()
            self._running.append(seq)
            self._outbox.append(Admitted(seq.req.request_id, self._time))
            chunks.append((seq, n))
            budget -= n
        if not chunks:
            # Everything waits on blocks that no running request will free: cannot happen
            # because add_request rejects requests larger than the whole cache.
            raise AssertionError("scheduler made no progress")
        self._step = _Step(self._time, self._time + self.perf.step_time(_shape(chunks)), chunks)
        return True

    def _complete(self, step: _Step) -> None:
        t = step.end
        for seq, n in step.chunks:
            seq.num_computed += n
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk that does not reach the end of the prompt
            seq.num_tokens += 1
            seq.num_output += 1
            rid = seq.req.request_id
            if self.every_token or seq.num_output == 1:
                self._outbox.append(Produced(rid, 1, t))
            if seq.num_output >= seq.req.num_output_tokens:
                self._running.remove(seq)
                del self._seqs[rid]
                self._free(seq)
                self._outbox.append(Finished(rid, t, seq.num_output))
        assert 0 <= self.num_free_blocks <= self.num_blocks

    def _allocate(self, seq: _Seq, num_tokens: int) -> bool:
        needed = -(-num_tokens // self.limits.block_size) - seq.num_blocks
        if needed > self.num_free_blocks:
            return False
        if needed > 0:
            seq.num_blocks += needed
            self.num_free_blocks -= needed
        return True

    def _free(self, seq: _Seq) -> None:
        self.num_free_blocks += seq.num_blocks
        seq.num_blocks = 0

    def _preempt(self, seq: _Seq) -> None:
        # Recompute preemption: the KV is dropped and prompt + output so far is prefilled again.
        self._free(seq)
        seq.num_computed = 0
        self._waiting.appendleft(seq)
        self._outbox.append(Preempted(seq.req.request_id, self._time))


class _StepSeries:
    """Durations of consecutive decode steps of one batch, summed in closed form."""

    def __init__(self, perf: PerfModel, chunks: list[tuple[_Seq, int]]) -> None:
        first = _shape(chunks)
        second = replace(
            first, num_decode_context_tokens=first.num_decode_context_tokens + len(chunks)
        )
        c0, c1 = perf.step_cost(first), perf.step_cost(second)
        self.compute = (c0.compute_s, c1.compute_s - c0.compute_s)
        self.memory = (c0.memory_s, c1.memory_s - c0.memory_s)
        self.fixed = c0.comm_s + c0.overhead_s

    def total(self, k: int) -> float:
        """Seconds of the first k steps: sum over j < k of max(compute_j, memory_j) + fixed."""
        (a1, b1), (a2, b2) = self.compute, self.memory
        # compute_j - memory_j is linear in j: one bound holds up to a crossing, the
        # other after it.
        if b1 == b2:
            split = 0 if a1 >= a2 else k
        else:
            split = min(k, max(0, math.ceil((a2 - a1) / (b1 - b2))))
        first, second = (self.memory, self.compute) if b1 > b2 else (self.compute, self.memory)
        if b1 == b2:
            first = second = self.compute if a1 >= a2 else self.memory
        return _line_sum(*first, 0, split) + _line_sum(*second, split, k) + k * self.fixed


def _line_sum(a: float, b: float, lo: int, hi: int) -> float:
    """Sum of a + b j for integer j in [lo, hi)."""
    if hi <= lo:
        return 0.0
    return (hi - lo) * a + b * (hi * (hi - 1) - lo * (lo - 1)) / 2


def _shape(chunks: list[tuple[_Seq, int]]) -> StepShape:
    prefill_tokens = 0
    prefill_pairs = 0.0
    prefill_context = 0
    decode_seqs = 0
    decode_context = 0
    for seq, n in chunks:
        if n == 1:
            decode_seqs += 1
            decode_context += seq.num_computed + 1
        else:
            prefill_tokens += n
            prefill_pairs += n * (seq.num_computed + (n + 1) / 2)
            prefill_context += seq.num_computed
    return StepShape(
        num_prefill_tokens=prefill_tokens,
        prefill_attention_pairs=prefill_pairs,
        num_decode_seqs=decode_seqs,
        num_decode_context_tokens=decode_context,
        num_prefill_context_tokens=prefill_context,
    )
