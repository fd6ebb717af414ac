"""The hardware limit: the model alone in ONNX Runtime, with the service's own session settings,
and the per-image cost of the CPU work around it (decode, warp)."""

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dipr.service.backend import OnnxBackend
from dipr.service.preprocess import prepare_image


@dataclass(frozen=True)
class LimitResult:
    batch_size: int
    images_per_s: float
    p50_ms: float  # per batch
    p95_ms: float
    p99_ms: float


def percentiles(samples_s: list[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.array(samples_s) * 1000, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def time_batches(backend: OnnxBackend, batch: np.ndarray, seconds: float) -> list[float]:
    """Seconds per `backend.infer(batch)`, closed loop, for about `seconds` (at least 3 runs)."""
    backend.infer(batch)  # warm
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        started = time.perf_counter()
        backend.infer(batch)
        times.append(time.perf_counter() - started)
    return times


def limit_result(batch_size: int, times: list[float]) -> LimitResult:
    p50, p95, p99 = percentiles(times)
    return LimitResult(batch_size, batch_size * len(times) / sum(times), p50, p95, p99)


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
    return prepare_image(data, None, None, input_size, padding=1.0, max_pixels=2**40).inputs[0]
