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

import heapq
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from inferplane.perf import PerfModel

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
    order: int = 0  # when it was (re)admitted: its place in the running batch
    # In the decode set: the counts above are as of decode step ``since``; the set's
    # counter says how many steps it has taken since (see ``_DecodeSet``).
    decoding: bool = False
    since: int = 0
    done_at: int = 0  # the decode step after which it has all its tokens


@dataclass(slots=True)
class _Step:
    start: float
    end: float
    # (sequence, tokens computed) of the sequences run one by one: prompt chunks, or,
    # in a step planned one by one, every sequence.
    chunks: list[tuple[_Seq, int]] = field(default_factory=list)
    decodes: int = 0  # sequences of the decode set in this step (one token each)
    # Its decode run, once worked out: (most steps, their durations), or None for none.
    # Arrivals do not change it (they only wait); an abort does.
    run: tuple[int, _StepSeries] | None = None
    run_known: bool = False


class _DecodeSet:
    """The running sequences that decode, kept as sums so a step costs O(1), not O(batch).

    Each step every member computes one token, so member i has computed ``c_i + g``
    tokens after ``g`` steps of the set: the batch's KV read is ``sum(c_i) + n * g``,
    and member i needs a new KV block in the step where ``c_i + g`` is a multiple of
    the block size, so the blocks a step needs are the members whose ``c_i`` falls in
    one residue class. Finishes come off a heap keyed by the step they happen in.
    """

    __slots__ = ("base_sum", "block_size", "finishes", "planned", "residues", "seqs", "steps")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.steps = 0  # g: steps the set has taken
        self.seqs: dict[_Seq, None] = {}
        self.base_sum = 0  # sum over members of (computed at joining - steps at joining)
        self.residues = [0] * block_size  # members by (that difference) mod block size
        self.finishes: list[tuple[int, int, _Seq]] = []  # (done_at, order, seq)
        # A step of the set is planned: its blocks are taken, its token not computed yet.
        self.planned = False

    def __len__(self) -> int:
        return len(self.seqs)

    def join(self, seq: _Seq) -> None:
        base = seq.num_computed - self.steps
        seq.decoding, seq.since = True, self.steps
        seq.done_at = self.steps + seq.req.num_output_tokens - seq.num_output
        self.seqs[seq] = None
        self.base_sum += base
        self.residues[base % self.block_size] += 1
        heapq.heappush(self.finishes, (seq.done_at, seq.order, seq))

    def leave(self, seq: _Seq) -> None:
        """Take ``seq`` out with its counts brought up to date (its heap entry goes stale)."""
        self.sync(seq)
        base = seq.num_computed - self.steps
        del self.seqs[seq]
        seq.decoding = False
        self.base_sum -= base
        self.residues[base % self.block_size] -= 1

    def sync(self, seq: _Seq) -> None:
        """Bring a member's counts to the set's current step."""
        d = self.steps - seq.since
        if d:
            seq.num_computed += d
            seq.num_tokens += d
            seq.num_output += d
            seq.since = self.steps
        seq.num_blocks = -(-(seq.num_computed + self.planned) // self.block_size)

    def context(self) -> int:
        """KV tokens the decode tokens of the set's next step attend to."""
        return self.base_sum + len(self.seqs) * (self.steps + 1)

    def blocks_needed(self) -> int:
        """New KV blocks the members need in the set's next step."""
        return self.residues[-self.steps % self.block_size]

    def blocks_over(self, first: int, last: int) -> int:
        """New KV blocks over steps ``steps + first`` .. ``steps + last - 1``."""
        bs = self.block_size
        cycles, rest = divmod(last - first, bs)
        total = cycles * len(self.seqs)
        for j in range(first, first + rest):
            total += self.residues[-(self.steps + j) % bs]
        return total

    def first_done(self) -> int | None:
        """The step after which the next member has all its tokens."""
        heap = self.finishes
        while heap and not (heap[0][2].decoding and heap[0][2].done_at == heap[0][0]):
            heapq.heappop(heap)  # stale: it left the set since
        return heap[0][0] if heap else None

    def pop_done(self) -> list[_Seq]:
        """Members that have all their tokens, in batch order; they leave the set."""
        done = []
        while (at := self.first_done()) is not None and at <= self.steps:
            done.append(heapq.heappop(self.finishes)[2])
        for seq in done:
            self.leave(seq)
        return done


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
        # Admitted, in admission order (the order vLLM schedules them, and preempts the
        # last); each is either in the decode set or prefilling (its prompt, or after a
        # preemption its tokens so far, not all computed yet).
        self._running: dict[_Seq, None] = {}
        self._decode = _DecodeSet(self.limits.block_size)
        self._prefilling: dict[_Seq, None] = {}
        self._admissions = 0
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
        if seq in self._running:
            self._retire(seq)
        else:
            self._waiting.remove(seq)
            self._free(seq)
        if self._step is not None:  # a decode-set member's token is simply not counted
            self._step.chunks = [(s, n) for s, n in self._step.chunks if s is not seq]
            self._step.run_known = False

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
        if not step.run_known:
            step.run, step.run_known = self._decode_run(step), True
        if step.run is None or self._admissible_head(len(self._decode)):
            return None
        bound, cost = step.run
        if until == math.inf:
            return bound, step.start + cost.total(bound)
        lo, hi = 1, bound  # the most steps that end by ``until``: T is increasing in k
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if step.start + cost.total(mid) <= until:
                lo = mid
            else:
                hi = mid - 1
        return (lo, step.start + cost.total(lo)) if lo >= 2 else None

    def _decode_run(self, step: _Step) -> tuple[int, _StepSeries] | None:
        """The most steps the decode set can run unchanged from ``step`` (until a member
        finishes or the KV cache fills) and their durations; None if fewer than two."""
        decode = self._decode
        if step.chunks or self._prefilling or not decode.seqs:
            return None  # prompt chunks in it, or one by one (a preemption was near)
        first_done = decode.first_done()
        assert first_done is not None
        bound = min(first_done - decode.steps, self._kv_steps(first_done - decode.steps))
        if bound < 2:
            return None
        return bound, _StepSeries(self.perf, len(decode), decode.context())

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

    def _kv_steps(self, most: int) -> int:
        """The most steps (<= ``most``) of the decode set whose KV blocks can all be
        allocated; the first (planned) step has its blocks already."""
        decode, free = self._decode, self.num_free_blocks
        lo, hi = 1, most
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if decode.blocks_over(1, mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _jump(self, step: _Step, k: int, end: float) -> None:
        """Apply k steps of an unchanged decode batch at once, as ``_complete`` would k
        times: each sequence gains k tokens, reported as one ``Produced`` at ``end``."""
        decode = self._decode
        # Finishes free blocks only after every allocation, as in the run's last step:
        # what an allocation evicts from the prefix cache must not depend on the driver.
        allocated = self._take_blocks(decode.blocks_over(1, k))
        assert allocated, "the run was sized to the free KV blocks"
        decode.steps += k
        decode.planned = False
        outcomes = [(seq.order, 0, seq) for seq in decode.seqs] if self.every_token else []
        outcomes.extend((seq.order, 1, seq) for seq in decode.pop_done())
        self._report(outcomes, k, end)
        self._time = end

    def _plan(self) -> bool:
        """Fix the batch of the next step, vLLM v1 style; False when there is nothing to run."""
        if not self._seqs:
            return False
        budget = self.limits.max_num_batched_tokens
        decode = self._decode
        # The common case, in O(prompt chunks): every running sequence gets all it asks
        # for (one token per decode, the rest of each prompt) and the KV blocks suffice.
        need_tokens = len(decode)
        need_blocks = decode.blocks_needed()
        bs = self.limits.block_size
        prefilling = sorted(self._prefilling, key=_order)  # in batch order, as vLLM goes
        for seq in prefilling:
            n = seq.num_tokens - seq.num_computed
            need_tokens += n
            need_blocks += max(0, -(-(seq.num_computed + n) // bs) - seq.num_blocks)
        if need_tokens <= budget and need_blocks <= self.num_free_blocks:
            chunks = []
            for seq in prefilling:
                n = seq.num_tokens - seq.num_computed
                allocated = self._allocate(seq, seq.num_computed + n)
                assert allocated, "counted above"
                if seq.hashes:
                    self._register(seq, seq.num_computed + n)
                chunks.append((seq, n))
            allocated = self._take_blocks(decode.blocks_needed())
            assert allocated, "counted above"
            num_decodes = len(decode)
            decode.planned = num_decodes > 0
            budget -= need_tokens
            preempted = False
        else:
            chunks, preempted = self._plan_one_by_one()
            budget -= sum(n for _, n in chunks)
            num_decodes = 0
        # No admissions in a step that had to preempt (vLLM does the same).
        while (
            not preempted
            and self._waiting
            and budget > 0
            and len(self._running) < self.limits.max_num_seqs
        ):
            seq = self._waiting[0]
            fit = self._fit(seq, budget, alone=not chunks and not num_decodes)
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
            self._admissions += 1
            seq.order = self._admissions
            self._running[seq] = None
            self._prefilling[seq] = None
            self._outbox.append(Admitted(seq.req.request_id, self._time, seq.num_computed))
            chunks.append((seq, n))
            budget -= n
        if not chunks and not num_decodes:
            # Everything waits on blocks that no running request will free: cannot happen
            # because add_request rejects requests larger than the whole cache (and cached
            # blocks nobody references count as free).
            raise AssertionError("scheduler made no progress")
        compute, memory, comm, overhead = self.perf.costs(
            *_shape(chunks, num_decodes, decode.context() if num_decodes else 0)
        )
        end = self._time + (max(compute, memory) + comm + overhead)
        self._step = _Step(self._time, end, chunks, num_decodes)
        return True

    def _plan_one_by_one(self) -> tuple[list[tuple[_Seq, int]], bool]:
        """vLLM v1's loop over the running requests, in order, for the steps where the
        token budget or the KV cache runs short: later requests get less or nothing, and
        the most recently admitted are preempted until the others' blocks fit. The
        decode set is dissolved for the step and formed again when it ends."""
        decode = self._decode
        for seq in list(decode.seqs):
            decode.leave(seq)
            self._prefilling[seq] = None
        decode.finishes.clear()
        budget = self.limits.max_num_batched_tokens
        chunks: list[tuple[_Seq, int]] = []
        preempted = False
        running = list(self._running)
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(seq.num_tokens - seq.num_computed, budget)
            while not self._allocate(seq, seq.num_computed + n):
                victim = running.pop()  # the most recently admitted
                del self._running[victim]
                del self._prefilling[victim]
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
        return chunks, preempted

    def _complete(self, step: _Step) -> None:
        t = step.end
        decode = self._decode
        outcomes: list[tuple[int, int, _Seq]] = []  # (batch order, 0 produced / 1 done, seq)
        if step.decodes:
            decode.steps += 1
            decode.planned = False
            if self.every_token:
                outcomes.extend((seq.order, 0, seq) for seq in decode.seqs)
        for seq, n in step.chunks:
            seq.num_computed += n
            if seq.num_computed < seq.num_tokens:
                continue  # a prefill chunk that does not reach the end of the prompt
            seq.num_tokens += 1
            seq.num_output += 1
            if self.every_token or seq.num_output == 1:
                outcomes.append((seq.order, 0, seq))
            del self._prefilling[seq]
            if seq.num_output >= seq.req.num_output_tokens:
                outcomes.append((seq.order, 1, seq))
            else:
                decode.join(seq)
        outcomes.extend((seq.order, 1, seq) for seq in decode.pop_done())
        self._report(outcomes, 1, t)
        assert len(self._idle) <= self.num_free_blocks <= self.num_blocks

    def _report(self, outcomes: list[tuple[int, int, _Seq]], num_tokens: int, t: float) -> None:
        """Report tokens and finishes request by request in batch order, as one loop over
        the batch would (finishes free their blocks in that order too)."""
        outcomes.sort(key=_by_order)
        for _, done, seq in outcomes:
            if done:
                self._finish(seq, t)
            else:
                self._outbox.append(Produced(seq.req.request_id, num_tokens, t))

    def _finish(self, seq: _Seq, t: float) -> None:
        rid = seq.req.request_id
        del self._running[seq]
        del self._seqs[rid]
        self._free(seq)
        self._outbox.append(Finished(rid, t, seq.num_output))

    def _retire(self, seq: _Seq) -> None:
        """Take a running ``seq`` out of the batch (aborted) and free its blocks."""
        if seq.decoding:
            self._decode.leave(seq)
        else:
            del self._prefilling[seq]
        del self._running[seq]
        self._free(seq)

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

    def _take_blocks(self, needed: int) -> bool:
        """Take ``needed`` free blocks for the decode set, evicting cached ones if no
        empty ones are left (members' own counts follow from their tokens)."""
        if needed > self.num_free_blocks:
            return False
        if needed > 0:
            if self._idle:
                evict = needed - (self.num_free_blocks - len(self._idle))
                if evict > 0:
                    self._evict(evict)
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

    def __init__(self, perf: PerfModel, num_seqs: int, context: int) -> None:
        """Steps of ``num_seqs`` decoding sequences, the first reading ``context`` tokens
        of KV in all, each later one ``num_seqs`` more."""
        c0, m0, comm, overhead = perf.costs(0, 0.0, num_seqs, context, 0)
        c1, m1, _, _ = perf.costs(0, 0.0, num_seqs, context + num_seqs, 0)
        self.compute = (c0, c1 - c0)
        self.memory = (m0, m1 - m0)
        self.fixed = comm + overhead

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


def _by_order(outcome: tuple[int, int, _Seq]) -> tuple[int, int]:
    return outcome[0], outcome[1]


def _order(seq: _Seq) -> int:
    return seq.order


def _line_sum(a: float, b: float, lo: int, hi: int) -> float:
    """Sum of a + b j for integer j in [lo, hi)."""
    if hi <= lo:
        return 0.0
    return (hi - lo) * a + b * (hi * (hi - 1) - lo * (lo - 1)) / 2


def _shape(
    chunks: list[tuple[_Seq, int]], decode_seqs: int, decode_context: int
) -> tuple[int, float, int, int, int]:
    """The fields of the step's `StepShape`: the sequences run one by one, plus
    ``decode_seqs`` of the decode set reading ``decode_context`` tokens of KV."""
    prefill_tokens = 0
    prefill_pairs = 0.0
    prefill_context = 0
    for seq, n in chunks:
        if n == 1:
            decode_seqs += 1
            decode_context += seq.num_computed + 1
        else:
            prefill_tokens += n
            prefill_pairs += n * (seq.num_computed + (n + 1) / 2)
            prefill_context += seq.num_computed
    return prefill_tokens, prefill_pairs, decode_seqs, decode_context, prefill_context
