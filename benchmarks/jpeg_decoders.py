"""JPEG decoding on the CPU (OpenCV, as the service decodes: at the coarsest scale the crop allows)
against nvImageCodec on a GPU (`DIPR_JPEG_DECODER=nvimgcodec`: full scale, pixels copied back to
the host): per photo size, the wall time and the CPU time of one decode, then images/s and CPU
per image with several threads decoding at once, as a front end's decode pool does.

The CPU time is the process's (every thread, the GPU driver's included): what a front-end core
pays per image, the figure that decides whether decoding on the GPU frees the CPU to feed it.
`make gpu-check` runs this as its "decode" stage; its dry run uses nvImageCodec's CPU decoder in
place of the GPU (same code, not GPU figures).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from dipr.core.decoders import OPENCV
from dipr.core.images import DecodedImage, ImageHeader, read_header
from dipr.core.prepare import coarsest_reduction

# The sizes a pose service meets: the fixture photo's own, full HD, a 12 MP phone photo.
SIZES = ((None, "fixture"), ((1920, 1080), "1920x1080"), ((4032, 3024), "4032x3024"))
MAX_PIXELS = 50_000_000
THREADS_CAP = 8  # a front end's decode threads: enough to load a GPU decoder, few enough to fit


class Budget(Protocol):
    def left(self) -> float: ...


@dataclass
class DecodeFigure:
    size: str
    decoder: str
    threads: int
    reduction: int
    images: int
    wall_ms: float  # per image, median of single-thread decodes; threads > 1: mean wall per image
    cpu_ms: float  # process CPU time per image
    images_per_s: float


Decode = Callable[[bytes, ImageHeader], DecodedImage]


def sized_photos(photo: Path) -> list[tuple[str, bytes]]:
    """The photo as it is, then enlarged to the larger SIZES (JPEG quality 92)."""
    original = photo.read_bytes()
    pixels = cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_COLOR)
    photos = []
    for size, name in SIZES:
        if size is None:
            photos.append((f"{name} {pixels.shape[1]}x{pixels.shape[0]}", original))
            continue
        resized = cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC)
        ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        photos.append((name, encoded.tobytes()))
    return photos


def decoders(
    jpeg_decoder: Any, input_size: tuple[int, int]
) -> dict[str, tuple[Decode, Callable[[ImageHeader], int]]]:
    """name → (decode, the reduction it decodes at); `jpeg_decoder`: an NvimgcodecJpegDecoder."""

    def opencv_reduced(data: bytes, header: ImageHeader) -> DecodedImage:
        return OPENCV.decode(data, header, coarsest_reduction(header, None, input_size))

    def opencv_reduction(header: ImageHeader) -> int:
        return OPENCV.reduction(header, coarsest_reduction(header, None, input_size))

    return {
        "OpenCV, reduced (as served)": (opencv_reduced, opencv_reduction),
        "OpenCV, full scale": (lambda data, header: OPENCV.decode(data, header), lambda _: 1),
        f"nvImageCodec ({jpeg_decoder.where})": (jpeg_decoder.decode, lambda _: 1),
    }


def time_single(
    decode: Decode, data: bytes, header: ImageHeader, seconds: float
) -> tuple[float, float, int]:
    """(median wall ms, CPU ms per image, images) of back-to-back decodes on this thread."""
    decode(data, header)  # first call: the decoder's own set-up
    walls: list[float] = []
    cpu_start, end = time.process_time(), time.monotonic() + seconds
    while time.monotonic() < end or len(walls) < 3:
        started = time.perf_counter()
        decode(data, header)
        walls.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu_start
    return float(np.median(walls) * 1000), cpu * 1000 / len(walls), len(walls)


def time_threads(
    decode: Decode, data: bytes, header: ImageHeader, threads: int, seconds: float
) -> tuple[float, float, int]:
    """(images/s, CPU ms per image, images) with `threads` threads decoding at once."""
    counts = [0] * threads
    start_line = threading.Barrier(threads + 1)
    end = 0.0

    def work(index: int) -> None:
        decode(data, header)  # this thread's decoder made before the clock starts
        start_line.wait()
        while time.monotonic() < end:
            decode(data, header)
            counts[index] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    end = time.monotonic() + seconds + 60  # the real end is set once every thread is ready
    start_line.wait()
    cpu_start, started = time.process_time(), time.monotonic()
    end = started + seconds
    for worker in workers:
        worker.join()
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_start
    images = max(1, sum(counts))
    return images / elapsed, cpu * 1000 / images, images


def compare(
    photo: Path, jpeg_decoder: Any, input_size: tuple[int, int], budget: Budget
) -> dict[str, Any]:
    """Every decoder on every size, one thread then `threads`; points past the budget skipped."""
    threads = max(2, min(THREADS_CAP, os.cpu_count() or 2))
    photos = sized_photos(photo)
    named = decoders(jpeg_decoder, input_size)
    points = len(photos) * len(named) * 2
    figures: list[DecodeFigure] = []
    skipped = 0
    for size, data in photos:
        header = read_header(data, "image/jpeg", MAX_PIXELS)
        for name, (decode, reduction) in named.items():
            for count in (1, threads):
                seconds = min(1.0, budget.left() / max(1, points))
                points -= 1
                if seconds < 0.05:
                    skipped += 1
                    continue
                if count == 1:
                    wall, cpu, images = time_single(decode, data, header, seconds)
                    rate = 1000 / wall
                else:
                    rate, cpu, images = time_threads(decode, data, header, count, seconds)
                    wall = 1000 / rate
                figures.append(
                    DecodeFigure(size, name, count, reduction(header), images, wall, cpu, rate)
                )
    return {
        "threads": threads,
        "figures": [asdict(figure) for figure in figures],
        "skipped_points": skipped,
    }


def decode_table(stage: dict[str, Any]) -> list[str]:
    if stage.get("status") != "ok":
        return []
    lines = [
        "",
        "JPEG decoding, per image (wall: median of one thread; with threads: 1 / images/s; CPU: "
        "the process's, every thread):",
        "",
        "| photo | decoder | threads | reduction | wall ms | CPU ms | images/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for f in stage["figures"]:
        lines.append(
            f"| {f['size']} | {f['decoder']} | {f['threads']} | 1/{f['reduction']} | "
            f"{f['wall_ms']:.2f} | {f['cpu_ms']:.2f} | {f['images_per_s']:.0f} |"
        )
    if stage.get("skipped_points"):
        lines.append(f"\n{stage['skipped_points']} points skipped: the stage's budget was spent.")
    return lines


def decode_summary(stage: dict[str, Any]) -> str:
    """One line: CPU per image of the served OpenCV decode and of nvImageCodec, largest photo,
    all threads decoding."""
    figures = [f for f in stage["figures"] if f["threads"] == stage["threads"]]
    if not figures:
        return "no point measured"
    largest = figures[-1]["size"]
    cells = [
        f"{f['decoder']} {f['cpu_ms']:.2f} ms CPU"
        for f in figures
        if f["size"] == largest and not f["decoder"].startswith("OpenCV, full")
    ]
    return f"{largest}, {stage['threads']} threads: " + ", ".join(cells)
