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

Automatic prefix caching follows vLLM v1 too (``vllm/v1/core/block_pool.py``,
``kv_cache_manager.py``): a request may carry a hash chain of its prompt's full
blocks; once scheduled, those blocks are registered under their hash, and a
later request whose leading hashes are registered reuses them (reference
counted) and prefills only the rest. A block nobody references stays cached but
counts as free; it is evicted, least recently freed first, only when an
allocation needs the room. A request without hashes costs no cache work.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
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
    # vLLM v1 enables automatic prefix caching by default.
    enable_prefix_caching: bool = True

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
    # One hash per full block of the prompt, each covering its block and every one
    # before it (vLLM's chain); empty when the caller knows nothing of the prompt.
    block_hashes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request joined the running batch (again, after a preemption) at ``time``,
    its first ``num_cached_tokens`` prompt tokens found in the prefix cache."""

    request_id: str
    time: float
    num_cached_tokens: int = 0


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
    num_blocks: int = 0  # blocks it holds, shared ones included
    # The prompt's block hashes while some are left to register, else (); always () without
    # prefix caching. Checked for every running request at every step: keep it one test.
    hashes: tuple[int, ...] = ()
    num_hashed: int = 0  # leading blocks already taken from or entered in the cache
    shared: list[int] = field(default_factory=list)  # hashes of cached blocks it references
    preempted: bool = False


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
        # Free blocks: empty ones plus cached ones nobody references (vLLM's free queue).
        self.num_free_blocks = self.num_blocks
        self._caching = self.limits.enable_prefix_caching
        # The prefix cache: references per registered block hash. Those at 0 are also in
        # ``_idle``, least recently freed first: the order of eviction.
        self._refs: dict[int, int] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()
        # Prompt tokens looked up in the cache and found there, on first admissions
        # (vLLM's prefix_cache_queries and prefix_cache_hits).
        self.num_prefix_queries = 0
        self.num_prefix_hits = 0
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

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache, referenced or not."""
        return len(self._refs)

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
        hashes = req.block_hashes
        if len(hashes) > req.num_prompt_tokens // self.limits.block_size:
            raise ValueError("more block hashes than full blocks in the prompt")
        self._run_until(now)
        if not self._seqs:
            self._time = now
        seq = _Seq(req, req.num_prompt_tokens, hashes=hashes if self._caching else ())
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

    def next_change_time(self) -> float | None:
        """When the batch next changes if nothing is added: the end of the step in
        flight, or of the whole decode run it starts (until a request finishes or the
        KV cache fills), or None when idle. A driver that needs no per-token events
        (the twin) wakes only then; ``advance`` crosses the run in one jump."""
        if self._step is None and not self._plan():
            return None
        step = self._step
        assert step is not None
        run = self._steady_run(step, math.inf)
        return step.end if run is None else run[1]

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
        # Its cached prefix can only shrink too (evictions), which only raises its need.
        return self._fit(self._waiting[0], budget, alone=False) is not None

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
        # Finishes free blocks only after every allocation, as in the run's last step:
        # what an allocation evicts from the prefix cache must not depend on the driver.
        for seq, _ in step.chunks:
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
                if seq.hashes:
                    self._register(seq, seq.num_computed + n)
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
            fit = self._fit(seq, budget, alone=not chunks)
            if fit is None:
                break
            num_cached, n = fit
            if num_cached:
                self._reuse(seq, num_cached)
            allocated = self._allocate(seq, seq.num_computed + n)
            assert allocated, "_fit counted the blocks"
            if seq.hashes:
                self._register(seq, seq.num_computed + n)
            if self._caching and not seq.preempted:
                self.num_prefix_queries += seq.num_tokens
                self.num_prefix_hits += seq.num_computed
            self._waiting.popleft()
            self._running.append(seq)
            self._outbox.append(Admitted(seq.req.request_id, self._time, seq.num_computed))
            chunks.append((seq, n))
            budget -= n
        if not chunks:
            # Everything waits on blocks that no running request will free: cannot happen
            # because add_request rejects requests larger than the whole cache (and cached
            # blocks nobody references count as free).
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
        assert len(self._idle) <= self.num_free_blocks <= self.num_blocks

    def _fit(self, seq: _Seq, budget: int, *, alone: bool) -> tuple[int, int] | None:
        """(cached blocks it reuses, tokens it computes) if the waiting ``seq`` can join
        a step with ``budget`` tokens left (``alone``: nothing else in it); else None.
        Changes nothing."""
        num_cached = num_idle = 0
        if seq.hashes:
            num_cached, num_idle = self._lookup(seq)
        bs = self.limits.block_size
        computed = num_cached * bs
        remaining = seq.num_tokens - computed
        if self.limits.enable_chunked_prefill:
            n = min(remaining, budget)
        elif remaining > budget and not alone:
            # Without chunked prefill a prompt goes in whole; one larger than the budget
            # still runs, alone, rather than waiting forever.
            return None
        else:
            n = remaining
        # Reusing a cached block nobody references takes it off the free list.
        needed = -(-(computed + n) // bs) - num_cached + num_idle
        return (num_cached, n) if needed <= self.num_free_blocks else None

    def _lookup(self, seq: _Seq) -> tuple[int, int]:
        """(leading blocks of ``seq`` found in the prefix cache, how many of those nobody
        references). The last prompt token is always recomputed, so that a fully cached
        prompt still has a token to sample from (vLLM does the same)."""
        refs = self._refs
        hashes = seq.hashes
        limit = min(len(hashes), (seq.num_tokens - 1) // self.limits.block_size)
        num_cached = num_idle = 0
        while num_cached < limit:
            ref = refs.get(hashes[num_cached])
            if ref is None:
                break
            num_cached += 1
            num_idle += ref == 0
        return num_cached, num_idle

    def _reuse(self, seq: _Seq, num_cached: int) -> None:
        """Start ``seq`` with its first ``num_cached`` blocks taken from the cache."""
        refs, idle = self._refs, self._idle
        for h in seq.hashes[:num_cached]:
            ref = refs[h]
            if ref == 0:
                del idle[h]
                self.num_free_blocks -= 1
            refs[h] = ref + 1
        seq.shared = list(seq.hashes[:num_cached])
        seq.num_blocks = seq.num_hashed = num_cached
        seq.num_computed = num_cached * self.limits.block_size

    def _register(self, seq: _Seq, num_tokens: int) -> None:
        """Enter the full prompt blocks among the first ``num_tokens`` of ``seq`` in the
        cache as they are scheduled (vLLM does it then: a later step can reuse them)."""
        refs = self._refs
        end = min(num_tokens // self.limits.block_size, len(seq.hashes))
        for h in seq.hashes[seq.num_hashed : end]:
            if h not in refs:
                refs[h] = 1
                seq.shared.append(h)
            # else another request computed the same block: this copy stays private.
        seq.num_hashed = max(seq.num_hashed, end)
        if seq.num_hashed == len(seq.hashes):
            seq.hashes = ()  # the whole prompt is in; a preemption brings them back

    def _allocate(self, seq: _Seq, num_tokens: int) -> bool:
        needed = -(-num_tokens // self.limits.block_size) - seq.num_blocks
        if needed > self.num_free_blocks:
            return False
        if needed > 0:
            if self._idle:  # cached blocks are given up only when no empty ones are left
                evict = needed - (self.num_free_blocks - len(self._idle))
                if evict > 0:
                    self._evict(evict)
            seq.num_blocks += needed
            self.num_free_blocks -= needed
        return True

    def _evict(self, num_blocks: int) -> None:
        idle, refs = self._idle, self._refs
        for _ in range(num_blocks):
            h, _ = idle.popitem(last=False)
            del refs[h]

    def _free(self, seq: _Seq) -> None:
        shared = seq.shared
        if shared:
            # Back newest first, so a prompt's tail is evicted before its head, which
            # more requests share (vLLM frees a request's blocks in reverse too).
            refs, idle = self._refs, self._idle
            released = 0
            for h in reversed(shared):
                ref = refs[h] - 1
                refs[h] = ref
                if ref == 0:
                    idle[h] = None
                    released += 1
            self.num_free_blocks += seq.num_blocks - len(shared) + released
            seq.shared = []
        else:
            self.num_free_blocks += seq.num_blocks
        seq.num_blocks = 0
        seq.num_hashed = 0

    def _preempt(self, seq: _Seq) -> None:
        # Recompute preemption: the KV is dropped and prompt + output so far is prefilled
        # again, less what the prefix cache still holds when it is readmitted.
        self._free(seq)
        seq.num_computed = 0
        seq.preempted = True
        if self._caching:
            seq.hashes = seq.req.block_hashes
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
