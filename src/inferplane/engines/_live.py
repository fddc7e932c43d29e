"""Drives an :class:`EngineCore` with the wall clock, step by step, for streaming.

The only difference from the twin's driver is how it waits: it sleeps until
the end of the step in flight (scaled by ``time_scale``) and wakes early when
a request arrives. Engine time is ``(wall - start) * time_scale`` seconds, read from
``perf_counter`` (uvloop's ``loop.time()`` only ticks in milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Protocol

from inferplane.engines._core import Admitted, EngineCore, EngineRequest, Event, Finished, Produced

__all__ = ["LiveEngine", "Observer", "Stream"]


@dataclass(slots=True)
class Stream:
    """One request's view of the engine: token counts arrive on ``queue``, then None."""

    request: EngineRequest
    arrival: float  # engine time
    queue: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    admitted_time: float | None = None  # first admission (preemption re-admits)
    num_cached_tokens: int = 0  # prompt tokens the prefix cache held at first admission
    last_token_time: float | None = None


class Observer(Protocol):
    """Told what happens to each stream, at engine time ``t`` (metrics, logs)."""

    def admitted(self, stream: Stream, t: float) -> None: ...

    def produced(self, stream: Stream, t: float, num_tokens: int) -> None: ...

    def preempted(self, stream: Stream, t: float) -> None: ...

    def finished(self, stream: Stream, t: float) -> None: ...


class LiveEngine:
    """Runs the core on the event loop; ``submit`` a request, read its ``Stream``."""

    def __init__(
        self, core: EngineCore, time_scale: float = 1.0, observer: Observer | None = None
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.core = core
        self.time_scale = time_scale
        self._observer = observer
        self._streams: dict[str, Stream] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0

    def now(self) -> float:
        return (time.perf_counter() - self._t0) * self.time_scale

    async def start(self) -> None:
        self._t0 = time.perf_counter()
        self._task = asyncio.create_task(self._run(), name="engine-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, request: EngineRequest) -> Stream:
        now = self.now()
        self.core.add_request(request, now)
        stream = Stream(request, now)
        self._streams[request.request_id] = stream
        self._deliver(self.core.advance(now))
        self._wake.set()
        return stream

    def cancel(self, request_id: str) -> None:
        if self._streams.pop(request_id, None) is not None:
            now = self.now()
            self.core.abort(request_id, now)
            self._deliver(self.core.advance(now))

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            t_next = self.core.next_event_time()
            if t_next is None:
                await self._wake.wait()
                continue
            delay = (t_next - self.now()) / self.time_scale
            if delay > 0:
                # Arrivals do not change the step in flight, so sleeping through them is exact.
                await asyncio.sleep(delay)
            else:
                # Running behind the engine clock: still let the streams flush.
                await asyncio.sleep(0)
            self._deliver(self.core.advance(self.now()))

    def _deliver(self, events: list[Event]) -> None:
        observer = self._observer
        for event in events:
            stream = self._streams.get(event.request_id)
            if stream is None:
                continue
            if isinstance(event, Produced):
                if observer is not None:
                    observer.produced(stream, event.time, event.num_tokens)
                stream.last_token_time = event.time
                stream.queue.put_nowait(event.num_tokens)
            elif isinstance(event, Admitted):
                if stream.admitted_time is None:
                    stream.admitted_time = event.time
                    stream.num_cached_tokens = event.num_cached_tokens
                    if observer is not None:
                        observer.admitted(stream, event.time)
            elif isinstance(event, Finished):
                del self._streams[event.request_id]
                if observer is not None:
                    observer.finished(stream, event.time)
                stream.queue.put_nowait(None)
            elif observer is not None:
                observer.preempted(stream, event.time)
