"""The CPU threads take turns between requests, drop work nobody waits for any more, and pass a
unit's failure to its request."""

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from dipr.core.errors import DeadlineExceeded
from dipr.service.fair_pool import FairPool


@contextmanager
def running(workers: int, light_workers: int = 0) -> Iterator[FairPool]:
    pool = FairPool(workers, light_workers)
    pool.start()
    try:
        yield pool
    finally:
        pool.stop()


def sleeper(log: list[str], name: str, seconds: float = 0.02):
    def run() -> str:
        time.sleep(seconds)
        log.append(name)
        return name

    return run


async def test_a_small_request_is_served_in_its_turn_not_after_a_large_one():
    with running(1) as pool:
        log: list[str] = []
        deadline = time.monotonic() + 30
        heavy = pool.queue(deadline)
        light = pool.queue(deadline)
        heavy_units = [asyncio.ensure_future(heavy.run(sleeper(log, f"h{i}"))) for i in range(20)]
        while not log:  # the heavy request's first unit is done, its second running
            await asyncio.sleep(0.001)
        assert await light.run(sleeper(log, "light")) == "light"
        # Ahead of it: the unit running when it arrived and the heavy request's turn, which
        # came first in the rotation; not the other seventeen.
        assert log.index("light") <= 3
        await asyncio.gather(*heavy_units)
        assert log.count("light") == 1 and len(log) == 21


async def test_units_whose_deadline_passed_or_whose_request_ended_are_not_run():
    with running(1) as pool:
        log: list[str] = []
        blocker = pool.queue(time.monotonic() + 30)
        blocking = asyncio.ensure_future(blocker.run(sleeper(log, "blocker", 0.3)))
        await asyncio.sleep(0.05)
        late = pool.queue(time.monotonic() + 0.1)  # passes while the blocker runs
        ended = pool.queue(time.monotonic() + 30)
        late_unit = asyncio.ensure_future(late.run(sleeper(log, "late")))
        ended_unit = asyncio.ensure_future(ended.run(sleeper(log, "ended")))
        await asyncio.sleep(0)
        ended.close()
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await late_unit
        with pytest.raises(DeadlineExceeded, match="request ended"):
            await ended_unit
        await blocking
        assert log == ["blocker"]


async def test_a_cancelled_request_leaves_nothing_queued():
    with running(1) as pool:
        log: list[str] = []
        blocking = asyncio.ensure_future(
            pool.queue(time.monotonic() + 30).run(sleeper(log, "b", 0.2))
        )
        await asyncio.sleep(0.05)
        queue = pool.queue(time.monotonic() + 30)
        waiting = asyncio.ensure_future(queue.run(sleeper(log, "cancelled")))
        await asyncio.sleep(0)
        assert pool.waiting == 1
        waiting.cancel()
        queue.close()  # what the pipeline does when its request is cancelled
        assert pool.waiting == 0
        await blocking
        await asyncio.sleep(0.05)
        assert log == ["b"]


async def test_a_failing_unit_fails_its_request_and_the_thread_serves_on():
    with running(1) as pool:
        queue = pool.queue(time.monotonic() + 30)

        def fail() -> None:
            raise ValueError("bad image")

        with pytest.raises(ValueError, match="bad image"):
            await queue.run(fail)
        assert await queue.run(lambda: threading.current_thread().name) == "dipr-cpu-0"


async def test_a_light_request_has_a_thread_of_its_own_while_a_large_decode_runs():
    with running(1, light_workers=1) as pool:
        log: list[str] = []
        deadline = time.monotonic() + 30
        heavy = pool.queue(deadline)
        units = [asyncio.ensure_future(heavy.run(sleeper(log, f"h{i}", 0.2))) for i in range(3)]
        await asyncio.sleep(0.05)  # h0 runs on the one general thread
        light = pool.queue(deadline)
        light.light = True
        started = time.monotonic()
        assert await light.run(lambda: threading.current_thread().name) == "dipr-cpu-light-0"
        assert time.monotonic() - started < 0.1  # not after h0 (0.2 s)
        # The light thread never takes a heavy request's units.
        await asyncio.gather(*units)
        assert log == ["h0", "h1", "h2"]
