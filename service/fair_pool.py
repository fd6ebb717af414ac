"""Threads for the CPU work of requests (decoding, warping), which take turns between requests.

Each request gets its own queue of units (one image's decode or crop); the threads serve the
queues round-robin, one unit each in turn. A request waits for at most the units running when it
came plus one turn of each request ahead of it, never for every image of the large requests that
came first (a thread pool with one shared queue would serve them first to last). Light requests
(the admission's light lane) are also served by threads of their own, so that an ordinary photo
never waits for a 49-megapixel decode to end. A unit whose request's deadline has passed, or
whose request has ended, is dropped instead of run.
"""

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dipr.core.errors import DeadlineExceeded, Overloaded

T = TypeVar("T")


@dataclass(eq=False)
class _Unit:
    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


class RequestQueue:
    """One request's units: run in order, one per turn."""

    def __init__(self, pool: "FairPool", deadline: float) -> None:
        self.deadline = deadline
        self._pool = pool
        self._units: deque[_Unit] = deque()
        self._closed = False
        self._in_turn = False  # in the pool's rotation
        self.light = False  # a light request (admission's lane): the light threads serve it too

    async def run(self, function: Callable[[], T]) -> T:
        """`function()` in one of the pool's threads, in this request's turn."""
        loop = asyncio.get_running_loop()
        unit = _Unit(function, loop, loop.create_future())
        self._pool._put(self, unit)
        result: T = await unit.future
        return result

    def close(self) -> None:
        """The request ended (answered, failed, timed out): its units not yet started go."""
        self._pool._drop(self)


class FairPool:
    """`workers` threads serve every request in turn; `light_workers` more serve only light
    requests, so that one is never queued behind large decodes."""

    def __init__(self, workers: int, light_workers: int = 0) -> None:
        if workers < 1 or light_workers < 0:
            raise ValueError("a pool needs at least one worker")
        self._cond = threading.Condition()
        self._turns: deque[RequestQueue] = deque()
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._serve, args=(False,), name=f"dipr-cpu-{i}", daemon=True)
            for i in range(workers)
        ] + [
            threading.Thread(
                target=self._serve, args=(True,), name=f"dipr-cpu-light-{i}", daemon=True
            )
            for i in range(light_workers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Finish the units queued, then end the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def queue(self, deadline: float) -> RequestQueue:
        return RequestQueue(self, deadline)

    @property
    def waiting(self) -> int:
        """Requests with units waiting for a thread."""
        return len(self._turns)

    def _put(self, queue: RequestQueue, unit: _Unit) -> None:
        with self._cond:
            if self._stopping:
                raise Overloaded("the service is shutting down", cause="shutting_down")
            if queue._closed:
                raise RuntimeError("the request's queue is closed")
            queue._units.append(unit)
            if not queue._in_turn:
                queue._in_turn = True
                self._turns.append(queue)
            self._cond.notify_all()  # a thread that serves this queue's kind may be waiting

    def _drop(self, queue: RequestQueue) -> None:
        with self._cond:
            queue._closed = True
            dropped = list(queue._units)
            queue._units.clear()
            if queue._in_turn:
                self._turns.remove(queue)
                queue._in_turn = False
        for unit in dropped:
            _settle(unit, error=DeadlineExceeded("the request ended before this work started"))

    def _next(self, light_only: bool) -> tuple[RequestQueue, _Unit] | None:
        with self._cond:
            while (queue := self._first(light_only)) is None:
                if self._stopping:
                    return None  # stopping and drained (of what this thread serves)
                self._cond.wait()
            self._turns.remove(queue)  # the first of its kind: near the front
            unit = queue._units.popleft()
            if queue._units:
                self._turns.append(queue)  # its next unit waits for the others' turns
            else:
                queue._in_turn = False
            return queue, unit

    def _first(self, light_only: bool) -> RequestQueue | None:
        if not light_only:
            return self._turns[0] if self._turns else None
        return next((queue for queue in self._turns if queue.light), None)

    def _serve(self, light_only: bool) -> None:
        while (taken := self._next(light_only)) is not None:
            queue, unit = taken
            if time.monotonic() > queue.deadline:
                _settle(unit, error=DeadlineExceeded("the deadline passed before decoding"))
                continue
            try:
                result = unit.run()
            except Exception as error:  # the request's own failure (a bad image, …)
                _settle(unit, error=error)
            else:
                _settle(unit, result=result)


def _settle(unit: _Unit, result: object = None, error: Exception | None = None) -> None:
    def apply() -> None:
        if unit.future.done():  # cancelled: the request is gone
            return
        if error is not None:
            unit.future.set_exception(error)
        else:
            unit.future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed event loop: nobody waits for it any more
        unit.loop.call_soon_threadsafe(apply)
