"""The hardware limit: the models alone in ONNX Runtime, with the service's own session settings
(the pose model on crops; for images without boxes, the detector and then the pose model on the
persons it finds), and the per-image cost of the CPU work around them (decode, warp)."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dipr.core.detection import boxes_of, detect, letterbox
from dipr.core.images import read_header
from dipr.core.prepare import crop_boxes, decode_for_boxes, prepare_image, refine_for_boxes


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


def time_runs(run: Callable[[], object], seconds: float) -> list[float]:
    """Seconds per `run()`, closed loop, for about `seconds` (at least 3 runs)."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def time_streams(
    run: Callable[[], object],
    images_per_run: int,
    streams: int,
    seconds: float,
    into: LimitSamples,
) -> None:
    """`streams` threads, each calling `run()` (`images_per_run` images of work) in a closed loop
    for about `seconds`."""
    for _ in range(streams):
        run()  # warm every per-thread allocation before the clock starts
    per_thread: list[list[float]] = [[] for _ in range(streams)]

    def stream(times: list[float]) -> None:
        times.extend(time_runs(run, seconds))

    threads = [threading.Thread(target=stream, args=(times,)) for times in per_thread]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    into.seconds += time.perf_counter() - started
    for times in per_thread:
        into.times += times
        into.images += images_per_run * len(times)


@dataclass(frozen=True)
class DetectionWork:
    """What the models do for one image sent without boxes: the detector on its letterbox, then
    the pose model on the crops of the persons found."""

    letterbox: np.ndarray  # uint8 [1, H, W, 3]
    crops: np.ndarray  # uint8 [persons, H, W, 3]
    boxes: list[tuple[float, float, float, float]]  # the persons', image pixels


def detection_work(
    data: bytes,
    detector: Callable[[np.ndarray], dict[str, np.ndarray]],
    detector_size: tuple[int, int],
    pose_size: tuple[int, int],
    min_score: float,
) -> DetectionWork:
    """The inputs the service gives both models for this photo (`dipr.core`), found once, and
    the boxes of the persons."""
    header = read_header(data, None, 2**40)
    decoded = decode_for_boxes(data, header, None, pose_size)
    boxes = boxes_of(detect(decoded, detector, detector_size, min_score))
    refined = refine_for_boxes(data, header, decoded, boxes, pose_size)
    letterboxed = letterbox(decoded, detector_size).inputs
    return DetectionWork(letterboxed, crop_boxes(refined, boxes, pose_size).inputs, boxes)


def measure_detection_preprocess(
    data: bytes,
    boxes: list[tuple[float, float, float, float]],
    detector_size: tuple[int, int],
    pose_size: tuple[int, int],
    repeats: int = 30,
) -> float:
    """Median ms of the CPU work around both models for one image without boxes: decode,
    letterbox, the finer decode if the persons need it, and their crops."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        header = read_header(data, None, 2**40)
        decoded = decode_for_boxes(data, header, None, pose_size)
        letterbox(decoded, detector_size)
        refined = refine_for_boxes(data, header, decoded, boxes, pose_size)
        crop_boxes(refined, boxes, pose_size)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)


def detection_run(
    work: DetectionWork,
    batch: int,
    detector: Callable[[np.ndarray], object],
    pose: Callable[[np.ndarray], object],
) -> Callable[[], object]:
    """`batch` images' worth of work: one detector batch, then one pose batch of their crops."""
    letterboxes = np.repeat(work.letterbox, batch, 0)
    crops = np.concatenate([work.crops] * batch)

    def run() -> object:
        detector(letterboxes)
        return pose(crops)

    return run


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
