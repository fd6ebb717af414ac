"""Dynamic batching of crops from concurrent requests, independent of HTTP and of ONNX.

Requests submit their crops from the event loop; worker threads take what has queued (up to
`max_batch_size` crops), run the inference function on the stacked batch, and scatter the rows
back. With `max_delay_s = 0` (CPU) a worker never waits for a batch to fill: it takes what
queued while the previous batch ran, which keeps latency at concurrency 1 unchanged. On a GPU a
small delay can buy larger batches. With several workers, a batch that has the machine to itself
runs with `infer`, and batches that run side by side with `infer_alongside` (on CPU: a share of
the cores each). A request's crops may span several batches; its result is reassembled in crop
order. The queue is bounded in crops (full → `Overloaded`; an empty queue takes any one request,
so it holds at most max(max_queue, one request's crops)), each request has a deadline (passed →
`DeadlineExceeded`; crops not yet run are dropped), and a failing batch fails only the requests
that had crops in it.

Under overload nothing is computed for a request that would be answered too late. From its last
batches the batcher knows how long a crop takes (`CropTime`, apart for batches alone on the
machine and alongside others): a crop with less time left before its request's deadline than 9
in 10 of those took is not run (its request gets `DeadlineExceeded` at once, and the machine goes
to requests that can still make it), and a batch is not filled past what its tightest deadline
allows (the rest waits for the next one). Until a batch was measured, nothing is refused so.
"""

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dipr.core.errors import DeadlineExceeded, InferenceFailed, Overloaded
from dipr.service.crop_submitter import CropSubmitter

InferFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class BatchObserver(Protocol):
    """What the batcher reports (the service turns it into metrics)."""

    def batch_done(self, size: int, queue_waits: list[float], seconds: float) -> None: ...

    def queue_depth(self, depth: int) -> None: ...


class _NoObserver:
    def batch_done(self, size: int, queue_waits: list[float], seconds: float) -> None:
        pass

    def queue_depth(self, depth: int) -> None:
        pass


@dataclass(eq=False)
class _Job:
    """One request: its crops, where their results go, and how to wake the request."""

    crops: np.ndarray
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float = field(default_factory=time.monotonic)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    remaining: int = 0
    # Set once the job is answered or given up (by the worker or the waiting request): its
    # remaining crops are skipped. A plain flag, because the future belongs to the event loop.
    closed: bool = False

    def abandoned(self) -> bool:
        return self.closed or time.monotonic() > self.deadline

    def settle(
        self, result: dict[str, np.ndarray] | None = None, error: Exception | None = None
    ) -> None:
        self.closed = True

        def apply() -> None:
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result or {})

        self.loop.call_soon_threadsafe(apply)


def _expire(future: asyncio.Future[dict[str, np.ndarray]]) -> None:
    if not future.done():
        future.set_exception(
            DeadlineExceeded("the request's deadline passed before inference finished")
        )


class CropTime:
    """How long one crop takes to infer, learnt from a batcher's last batches: per crop, for
    batches alone on the machine and for batches alongside others (until one of them is known,
    the other's stands in). `likely_max` is a high quantile of the last `window` timings: a crop
    with less time left than that would likely be answered too late.

    Crops refused on the estimate are never measured: once no batch has run for `grace_s`, the
    bound fades (halves every `half_life_s`), so that a few slow batches cannot make every later
    crop look hopeless for long."""

    def __init__(
        self,
        window: int = 16,
        quantile: float = 0.9,
        grace_s: float = 1.0,
        half_life_s: float = 1.0,
    ) -> None:
        self.quantile = quantile
        self.grace_s = grace_s
        self.half_life_s = half_life_s
        self._recent: dict[bool, deque[float]] = {
            True: deque(maxlen=window),
            False: deque(maxlen=window),
        }
        self._running = 0
        self._last_end = 0.0

    def started(self) -> None:
        self._running += 1

    def ended(self, now: float, alone: bool, per_crop: float | None) -> None:
        """A batch ended; `per_crop` its seconds per crop, None if it failed (not a timing)."""
        self._running -= 1
        self._last_end = now
        if per_crop is not None:
            self._recent[alone].append(per_crop)

    def likely_max(self, alone: bool, now: float) -> float | None:
        """Seconds one crop will likely take at most; None before any batch was measured."""
        recent = self._recent[alone] or self._recent[not alone]
        if not recent:
            return None
        ordered = sorted(recent)
        bound = ordered[max(0, math.ceil(self.quantile * len(ordered)) - 1)]
        if self._running:
            return bound
        idle = now - self._last_end - self.grace_s
        return bound * 0.5 ** (max(0.0, idle) / self.half_life_s)


class Occupancy:
    """How many batches run right now, across every batcher that shares it (the pose model's
    and the detector's share the machine's cores): "alone" means alone on the machine."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0

    @property
    def running(self) -> int:
        return self._running

    def enter(self) -> None:
        with self._lock:
            self._running += 1

    def leave(self) -> None:
        with self._lock:
            self._running -= 1


class Batcher(CropSubmitter):
    def __init__(
        self,
        infer: InferFn,
        max_batch_size: int,
        max_queue: int,
        max_delay_s: float = 0.0,
        observer: BatchObserver | None = None,
        workers: int = 1,
        infer_alongside: InferFn | None = None,
        occupancy: Occupancy | None = None,
        name: str = "batch",
        crop_time: CropTime | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_delay_s < 0 or workers < 1:
            raise ValueError("max_batch_size, max_queue, workers must be ≥ 1, max_delay_s ≥ 0")
        self._infer = infer
        self.name = name  # the model's role ("pose", "detector"): names its threads and refusals
        # With several workers: how to run a batch while another batch is running or waiting
        # (on CPU, on a share of the cores: its own, instead of contending for all of them).
        # Such batches are a quarter of the largest: every worker gets some of the queue, and on
        # CPU small batches run faster per crop (their activations stay in cache).
        self._infer_alongside = infer_alongside
        self.alongside_batch_size = max(1, max_batch_size // 4)
        self._occupancy = occupancy or Occupancy()
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self._max_delay = max_delay_s
        self._observer = observer or _NoObserver()
        self._queue: deque[tuple[_Job, int]] = deque()  # (job, crop index)
        self._cond = threading.Condition()
        self._stopping = False
        # Several workers let one batch's inference overlap another's (on CPU, ONNX Runtime leaves
        # cores idle in its less parallel operators); results of one request may then arrive
        # from different threads, so scattering them takes a lock.
        self._threads = [
            threading.Thread(target=self._run, name=f"dipr-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._scatter = threading.Lock()
        self.consecutive_failures = 0
        self._crop_time = crop_time or CropTime()  # guarded by _cond

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what was accepted, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    async def submit(self, crops: np.ndarray, deadline: float) -> dict[str, np.ndarray]:
        """Run `crops` [n, H, W, 3]; returns each output with n rows, in crop order."""
        if len(crops) == 0:
            return {}
        loop = asyncio.get_running_loop()
        job = _Job(
            crops=crops,
            deadline=deadline,
            loop=loop,
            future=loop.create_future(),
            remaining=len(crops),
        )
        with self._cond:
            if self._stopping:
                raise Overloaded("the service is shutting down", cause="shutting_down")
            # An empty queue takes any one request, even one larger than it (the persons a
            # detector found in many images): refused, it could never be admitted.
            if self._queue and len(self._queue) + len(crops) > self.max_queue:
                raise Overloaded(
                    f"the {self.name} queue is full ({len(self._queue)} waiting)",
                    cause=f"{self.name}_queue",
                )
            self._queue.extend((job, i) for i in range(len(crops)))
            self._observer.queue_depth(len(self._queue))
            self._cond.notify()
        # The deadline as a timer on the job's own future, not asyncio.wait_for (a waiter future,
        # a callback and a timer per call, on the event loop's thread: issue #16).
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), _expire, job.future)
        try:
            return await job.future
        finally:
            # Answered, timed out or cancelled (the request's own deadline, a client gone):
            # crops not yet run are skipped.
            timer.cancel()
            job.closed = True

    def _take_batch(self) -> tuple[list[tuple[_Job, int]], bool] | None:
        """The next batch, and whether it has the machine to itself (nothing else running or
        waiting)."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None  # stopping and drained
            if self._max_delay > 0 and len(self._queue) < self.max_batch_size:
                fill_by = self._queue[0][0].enqueued + self._max_delay
                self._cond.wait_for(
                    lambda: len(self._queue) >= self.max_batch_size,
                    timeout=max(0.0, fill_by - time.monotonic()),
                )
            alone = self._occupancy.running == 0 and len(self._queue) <= self.max_batch_size
            size = (
                self.max_batch_size
                if alone or self._infer_alongside is None
                else self.alongside_batch_size
            )
            batch = self._fill(size, alone)
            if batch:
                self._crop_time.started()
            self._observer.queue_depth(len(self._queue))
            self._occupancy.enter()
            if self._queue:
                self._cond.notify()  # an idle worker can take the rest
            return batch, alone

    def _fill(self, size: int, alone: bool) -> list[tuple[_Job, int]]:
        """Up to `size` crops from the head of the queue (the lock held): those abandoned, or that
        could not be done before their deadline, are dropped (their requests answered at once);
        the batch stops growing where one more crop would make its tightest deadline late."""
        now = time.monotonic()
        per_crop = self._crop_time.likely_max(alone, now)
        tightest = float("inf")  # the least time left to a request in the batch
        batch: list[tuple[_Job, int]] = []
        while self._queue and len(batch) < size:
            job, _ = self._queue[0]
            if job.abandoned():
                self._queue.popleft()
                if not job.closed:
                    job.settle(error=DeadlineExceeded("deadline passed while queued"))
                continue
            if per_crop is not None:
                left = job.deadline - now
                if left < per_crop:
                    self._queue.popleft()
                    job.settle(
                        error=DeadlineExceeded("the deadline would pass before inference finished")
                    )
                    continue
                if batch and min(tightest, left) < per_crop * (len(batch) + 1):
                    break  # it goes in the next batch
                tightest = min(tightest, left)
            batch.append(self._queue.popleft())
        return batch

    def _run(self) -> None:
        while (taken := self._take_batch()) is not None:
            batch, alone = taken
            try:
                if batch:
                    infer = self._infer if alone else self._infer_alongside or self._infer
                    seconds: float | None = None
                    try:
                        seconds = self._run_batch(batch, infer)
                    finally:
                        with self._cond:
                            per_crop = None if seconds is None else seconds / len(batch)
                            self._crop_time.ended(time.monotonic(), alone, per_crop)
            finally:
                self._occupancy.leave()

    def _run_batch(self, batch: list[tuple[_Job, int]], infer: InferFn) -> float | None:
        """Runs the batch and answers its requests; its seconds of inference, None if failed."""
        started = time.monotonic()
        waits = [started - job.enqueued for job, _ in batch]
        try:
            outputs = infer(np.stack([job.crops[index] for job, index in batch]))
        except Exception as error:  # any failure of the model fails only this batch's requests
            self.consecutive_failures += 1
            failure = InferenceFailed(f"inference failed: {type(error).__name__}: {error}")
            for job in {job for job, _ in batch}:
                job.settle(error=failure)
            return None
        self.consecutive_failures = 0
        seconds = time.monotonic() - started
        self._observer.batch_done(len(batch), waits, seconds)
        with self._scatter:
            for row, (job, index) in enumerate(batch):
                for name, values in outputs.items():
                    if name not in job.outputs:
                        shape = (len(job.crops), *values.shape[1:])
                        job.outputs[name] = np.empty(shape, values.dtype)
                    job.outputs[name][index] = values[row]
                job.remaining -= 1
                if job.remaining == 0:
                    job.settle(result=job.outputs)
        return seconds
