"""The hardware limit: the model alone in ONNX Runtime, with the service's own session settings,
and the per-image cost of the CPU work around it (decode, warp)."""

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dipr.core.prepare import prepare_image
from dipr.service.batcher import InferFn


@dataclass(frozen=True)
class LimitResult:
    batch_size: int
    streams: int  # batches run at once, each from its own thread
    images_per_s: float
    p50_ms: float  # per batch
    p95_ms: float
    p99_ms: float


@dataclass
class LimitSamples:
    """Closed-loop runs of one batch size in `streams` threads at once, pooled over slices."""

    times: list[float] = field(default_factory=list)  # seconds per run, every stream
    images: int = 0
    seconds: float = 0.0  # wall time of the slices

    def summary(self, batch_size: int, streams: int) -> LimitResult:
        p50, p95, p99 = percentiles(self.times)
        return LimitResult(batch_size, streams, self.images / self.seconds, p50, p95, p99)


def percentiles(samples_s: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.array(samples_s) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def time_batches(infer: InferFn, batch: np.ndarray, seconds: float) -> list[float]:
    """Seconds per `infer(batch)`, closed loop, for about `seconds` (at least 3 runs)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        started = time.perf_counter()
        infer(batch)
        times.append(time.perf_counter() - started)
    return times


def time_streams(
    infer: InferFn, batch: np.ndarray, streams: int, seconds: float, into: LimitSamples
) -> None:
    """`streams` threads, each running `infer(batch)` in a closed loop for about `seconds`."""
    for _ in range(streams):
        infer(batch)  # warm every per-thread allocation before the clock starts
    per_thread: list[list[float]] = [[] for _ in range(streams)]

    def stream(times: list[float]) -> None:
        times.extend(time_batches(infer, batch, seconds))

    threads = [threading.Thread(target=stream, args=(times,)) for times in per_thread]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    into.seconds += time.perf_counter() - started
    for times in per_thread:
        into.times += times
        into.images += len(batch) * len(times)


def measure_preprocess(photo: Path, input_size: tuple[int, int], repeats: int = 50) -> float:
    """Median ms to decode the photo and warp it to the model input, as the service does."""
    data = photo.read_bytes()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model_input(data, input_size)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def model_input(data: bytes, input_size: tuple[int, int]) -> np.ndarray:
    """The service's network input for a whole photo (one person, no box)."""
    return prepare_image(data, None, None, input_size, max_pixels=2**40).cropped.inputs[0]
