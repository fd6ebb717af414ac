"""The dynamic batcher, with a deterministic inference function standing in for the model."""

import asyncio
import threading
import time

import numpy as np
import pytest

from dipr.core.errors import DeadlineExceeded, InferenceFailed, Overloaded
from dipr.service.batcher import Batcher, CropTime, Occupancy

POISON = 255  # a crop whose first pixel is this makes the stand-in model raise


class Recorder:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.waits: list[float] = []
        self.depths: list[int] = []

    def batch_done(self, size: int, queue_waits: list[float], seconds: float) -> None:
        self.sizes.append(size)
        self.waits += queue_waits

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)


def tagged(tags: list[int]) -> np.ndarray:
    """Crops whose first pixel carries a tag, so each result row can be traced to its crop."""
    crops = np.zeros((len(tags), 4, 4, 3), np.uint8)
    crops[:, 0, 0, 0] = tags
    return crops


def echo_model(delay: float = 0.0) -> tuple:
    calls: list[int] = []

    def infer(batch: np.ndarray) -> dict[str, np.ndarray]:
        calls.append(len(batch))
        time.sleep(delay)
        if (batch[:, 0, 0, 0] == POISON).any():
            raise RuntimeError("poisoned batch")
        return {
            "tag": batch[:, 0, 0, 0].astype(np.float32),
            "pair": np.stack([batch[:, 0, 0, 0]] * 2, axis=1).astype(np.float32),
        }

    return infer, calls


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.mark.parametrize("workers", [1, 2])
async def test_results_keep_crop_order_across_batches(recorder: Recorder, workers: int) -> None:
    infer, calls = echo_model(delay=0.01)
    batcher = Batcher(infer, max_batch_size=4, max_queue=64, observer=recorder, workers=workers)
    batcher.start()
    requests = [list(range(10 * r, 10 * r + 7)) for r in range(5)]
    results = await asyncio.gather(*(batcher.submit(tagged(t), deadline()) for t in requests))
    batcher.stop()
    for tags, result in zip(requests, results, strict=True):
        assert result["tag"].tolist() == tags
        assert result["pair"].shape == (7, 2)
    assert max(calls) <= 4 and sum(calls) == 35
    assert max(recorder.sizes) > 1  # crops of concurrent requests shared batches


async def test_greedy_batching_without_delay_takes_what_queued() -> None:
    infer, calls = echo_model(delay=0.05)
    batcher = Batcher(infer, max_batch_size=16, max_queue=64)
    batcher.start()
    first = asyncio.create_task(batcher.submit(tagged([1]), deadline()))
    await asyncio.sleep(0.01)  # the first batch (of one) is now running
    rest = [asyncio.create_task(batcher.submit(tagged([i]), deadline())) for i in range(2, 8)]
    await asyncio.gather(first, *rest)
    batcher.stop()
    assert calls[0] == 1  # it did not wait for company
    assert calls[1] == 6  # the six that queued meanwhile went together


async def test_a_batch_alone_uses_infer_and_batches_side_by_side_use_infer_alongside() -> None:
    """Two workers: one request alone runs on `infer` (all cores, on CPU); under load the batches
    that run while another runs or waits go to `infer_alongside`, a quarter of the size."""
    wide, wide_calls = echo_model(delay=0.05)
    alongside, alongside_calls = echo_model(delay=0.05)
    batcher = Batcher(wide, max_batch_size=8, max_queue=64, workers=2, infer_alongside=alongside)
    batcher.start()
    assert (await batcher.submit(tagged([1]), deadline()))["tag"].tolist() == [1]
    assert (wide_calls, alongside_calls) == ([1], [])
    tags = list(range(2, 26))
    results = await asyncio.gather(*(batcher.submit(tagged([t]), deadline()) for t in tags))
    batcher.stop()
    assert [r["tag"].tolist() for r in results] == [[t] for t in tags]
    assert sum(wide_calls) + sum(alongside_calls) == 25
    assert alongside_calls and max(alongside_calls) <= 2  # 8 // 4
    assert len(alongside_calls) >= 8  # under load, nearly all of the 24 went in batches of ≤ 2


async def test_batchers_sharing_the_machine_count_each_others_batches() -> None:
    """The pose model's and the detector's batchers share the cores: a batch of one while the
    other's runs is not alone, and goes to `infer_alongside`; once it is done, one is again."""
    slow, _ = echo_model(delay=0.3)
    wide, wide_calls = echo_model()
    alongside, alongside_calls = echo_model()
    occupancy = Occupancy()
    detector = Batcher(slow, max_batch_size=4, max_queue=8, occupancy=occupancy)
    pose = Batcher(wide, 4, 8, workers=2, infer_alongside=alongside, occupancy=occupancy)
    detector.start()
    pose.start()
    detecting = asyncio.create_task(detector.submit(tagged([1]), deadline()))
    await asyncio.sleep(0.1)  # the detector's batch is running
    assert occupancy.running == 1
    await pose.submit(tagged([2]), deadline())
    assert (wide_calls, alongside_calls) == ([], [1])
    await detecting
    await idle(occupancy)  # the results arrive a moment before the worker counts itself out
    await pose.submit(tagged([3]), deadline())
    assert (wide_calls, alongside_calls) == ([1], [1])
    await idle(occupancy)
    detector.stop()
    pose.stop()


async def idle(occupancy: Occupancy, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while occupancy.running and time.monotonic() < end:
        await asyncio.sleep(0.001)
    assert occupancy.running == 0


async def test_delay_lets_a_batch_fill() -> None:
    infer, calls = echo_model()
    batcher = Batcher(infer, max_batch_size=8, max_queue=64, max_delay_s=0.2)
    batcher.start()
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(batcher.submit(tagged([i]), deadline())))
        await asyncio.sleep(0.005)
    await asyncio.gather(*tasks)
    batcher.stop()
    assert calls == [8]


async def test_full_queue_is_overloaded_and_nothing_accepted_is_lost(recorder: Recorder) -> None:
    infer, _ = echo_model(delay=0.05)
    batcher = Batcher(infer, max_batch_size=2, max_queue=6, observer=recorder)
    batcher.start()
    accepted = [asyncio.create_task(batcher.submit(tagged([i, i]), deadline())) for i in range(3)]
    await asyncio.sleep(0)  # let them enqueue: 6 crops, the queue is full
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.submit(tagged([9]), deadline())
    results = await asyncio.gather(*accepted)
    batcher.stop()
    assert [r["tag"].tolist() for r in results] == [[0, 0], [1, 1], [2, 2]]
    assert max(recorder.depths) == 6 and recorder.depths[-1] == 0


async def test_deadline_fails_only_the_late_request() -> None:
    infer, calls = echo_model(delay=0.1)
    batcher = Batcher(infer, max_batch_size=1, max_queue=64)
    batcher.start()
    slow = asyncio.create_task(batcher.submit(tagged([1, 2, 3, 4]), deadline(5)))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(tagged([7]), deadline(0.05))
    assert (await slow)["tag"].tolist() == [1, 2, 3, 4]
    assert (await batcher.submit(tagged([8]), deadline()))["tag"].tolist() == [8]
    batcher.stop()
    assert sum(calls) == 5  # the expired crop was dropped, never run


async def test_a_failing_batch_fails_only_its_requests() -> None:
    infer, _ = echo_model(delay=0.02)
    batcher = Batcher(infer, max_batch_size=2, max_queue=64)
    batcher.start()
    blocker = asyncio.create_task(batcher.submit(tagged([1]), deadline()))
    await asyncio.sleep(0.005)
    poisoned = asyncio.create_task(batcher.submit(tagged([POISON, 3, 4]), deadline()))
    await asyncio.sleep(0.05)
    healthy = asyncio.create_task(batcher.submit(tagged([5, 6]), deadline()))
    with pytest.raises(InferenceFailed, match="poisoned batch"):
        await poisoned
    assert (await blocker)["tag"].tolist() == [1]
    assert (await healthy)["tag"].tolist() == [5, 6]
    assert batcher.consecutive_failures == 0  # the healthy batch reset the streak
    batcher.stop()


async def test_stop_finishes_accepted_work_then_refuses() -> None:
    infer, _ = echo_model(delay=0.02)
    batcher = Batcher(infer, max_batch_size=2, max_queue=64)
    batcher.start()
    accepted = [asyncio.create_task(batcher.submit(tagged([i]), deadline())) for i in range(6)]
    await asyncio.sleep(0)
    stopper = threading.Thread(target=batcher.stop)
    stopper.start()
    results = await asyncio.gather(*accepted)
    stopper.join()
    assert [r["tag"].tolist() for r in results] == [[i] for i in range(6)]
    with pytest.raises(Overloaded):
        await batcher.submit(tagged([1]), deadline())


async def test_no_crops_needs_no_inference() -> None:
    infer, calls = echo_model()
    batcher = Batcher(infer, max_batch_size=2, max_queue=4)
    batcher.start()
    assert await batcher.submit(tagged([]), deadline()) == {}
    batcher.stop()
    assert calls == []


async def test_an_empty_queue_takes_one_request_larger_than_itself(recorder: Recorder) -> None:
    """Persons a detector found can outnumber the queue: alone, such a request is admitted (else
    it never could be); behind others, it waits its turn like any request too large."""
    infer, _ = echo_model(delay=0.05)
    batcher = Batcher(infer, max_batch_size=4, max_queue=6, observer=recorder)
    batcher.start()
    large = asyncio.create_task(batcher.submit(tagged(list(range(10))), deadline()))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="queue is full"):
        await batcher.submit(tagged([1]), deadline())
    assert (await large)["tag"].tolist() == list(range(10))
    assert (await batcher.submit(tagged([7]), deadline()))["tag"].tolist() == [7]
    batcher.stop()


def test_crop_time_is_a_high_quantile_of_the_last_batches_per_crop() -> None:
    times = CropTime(window=10, quantile=0.9)
    assert times.likely_max(True, 0.0) is None  # nothing measured: nothing refused
    for seconds in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 1.0, 0.1):
        times.started()
        times.ended(0.0, True, seconds)
    # The window holds the last 10 (0.01 fell out); 9 in 10 took at most 0.1 s.
    assert times.likely_max(True, 0.0) == 0.1
    # Alongside others nothing was measured yet: the batches alone stand in.
    assert times.likely_max(False, 0.0) == 0.1
    times.started()
    times.ended(0.0, False, 0.5)
    assert times.likely_max(False, 0.0) == 0.5
    times.started()
    times.ended(0.0, True, None)  # a failed batch is no timing
    assert times.likely_max(True, 0.0) == 0.1


def test_crop_time_fades_while_no_batch_runs_so_refusals_cannot_last() -> None:
    times = CropTime(grace_s=1.0, half_life_s=1.0)
    times.started()
    times.ended(10.0, True, 0.8)  # one very slow batch
    assert times.likely_max(True, 10.9) == 0.8  # within the grace
    assert times.likely_max(True, 12.0) == pytest.approx(0.4)
    assert times.likely_max(True, 14.0) == pytest.approx(0.1)
    times.started()  # a batch runs: it will be measured, nothing fades meanwhile
    assert times.likely_max(True, 14.0) == 0.8


class FixedCropTime(CropTime):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def likely_max(self, alone: bool, now: float) -> float | None:
        return self.seconds


async def test_a_crop_that_would_be_late_is_not_run_and_batches_stop_at_the_tightest_deadline(
    recorder: Recorder,
) -> None:
    """Crops take 0.1 s: one with 0.05 s left is answered DeadlineExceeded without inference;
    a batch stops growing where one more crop would make a deadline in it late."""
    infer, calls = echo_model()
    batcher = Batcher(
        infer, max_batch_size=8, max_queue=64, observer=recorder, crop_time=FixedCropTime(0.1)
    )
    hopeless = asyncio.create_task(batcher.submit(tagged([1]), deadline(0.05)))
    roomy = asyncio.create_task(batcher.submit(tagged([2, 3]), deadline(5)))
    tight = asyncio.create_task(batcher.submit(tagged([4]), deadline(0.25)))
    await asyncio.sleep(0.01)  # all queued before the worker starts
    batcher.start()
    with pytest.raises(DeadlineExceeded, match="would pass"):
        await hopeless
    assert (await roomy)["tag"].tolist() == [2, 3]
    assert (await tight)["tag"].tolist() == [4]
    batcher.stop()
    # [2, 3, 4] would take 0.3 s, past the 0.25 s of 4: it went alone, next.
    assert calls == [2, 1]


async def test_after_one_batch_a_crop_without_time_for_inference_is_refused_at_once() -> None:
    infer, calls = echo_model(delay=0.2)
    batcher = Batcher(infer, max_batch_size=4, max_queue=64)
    batcher.start()
    await batcher.submit(tagged([1]), deadline())  # measured: 0.2 s or more per crop
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="would pass"):
        await batcher.submit(tagged([2]), deadline(0.1))
    assert time.monotonic() - started < 0.1  # answered before its deadline, not at it
    assert (await batcher.submit(tagged([3]), deadline()))["tag"].tolist() == [3]
    batcher.stop()
    assert calls == [1, 1]
