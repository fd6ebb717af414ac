"""One benchmark run: the limit, the service and the naive baseline, side by side, same machine,
same models, same photos. Loopback only; every stage is bounded in time.

Two kinds of request: a photo of one person with its box known (`?detect=false`, or 4 boxes):
the pose model alone; and a group photo sent without boxes: the detector, then the pose model on
each person it finds."""

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dipr.benchmarks.limit import (
    LimitResult,
    LimitSamples,
    detection_run,
    detection_work,
    measure_detection_preprocess,
    measure_preprocess,
    model_input,
    time_streams,
)
from dipr.benchmarks.load import LoadResult, LoadSamples, multipart_body, run_hey
from dipr.benchmarks.photos import group_photo
from dipr.benchmarks.servers import ServerProcess, free_port
from dipr.core import detector_contract
from dipr.core.detection import DEFAULT_MIN_PERSON_SCORE
from dipr.core.detector_contract import DetectorInfo
from dipr.service.backend import OnnxBackend, TensorrtOptions
from dipr.service.settings import Settings

# The group photo: these fixture photos side by side, one person each.
GROUP = ("astronaut.jpg", "camera.jpg", "grace_hopper.jpg")


@dataclass
class BenchConfig:
    model: Path
    photo: Path
    out_dir: Path
    detector: Path | None = None  # None: no requests without boxes
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    concurrencies: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    boxes_concurrency: int = 32
    detect_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    detect_concurrencies: list[int] = field(default_factory=lambda: [1, 32])
    limit_seconds: float = 10.0  # per batch size, all rounds together
    load_seconds: float = 20.0  # per load point, all rounds together
    rounds: int = 5
    provider: str = "cpu"  # cpu, cuda or tensorrt: the limit, the service and the naive baseline
    service_env: dict[str, str] = field(default_factory=dict)


@dataclass
class BenchReport:
    date: str
    machine: str
    provider: str
    service_env: dict[str, str]
    model: str
    photo: str
    preprocess_ms: float
    rounds: int
    limit: list[LimitResult]
    service: list[LoadResult]
    naive: list[LoadResult]
    ratios: dict[str, float]
    # Requests without boxes (empty when the run had no detector).
    detector: str = ""
    group_persons: int = 0  # persons the detector finds in the group photo
    detection_preprocess_ms: float = 0.0
    detection_limit: list[LimitResult] = field(default_factory=list)


ONE_PERSON = ("service", "naive")  # the targets of the photo of one person
NO_BOXES = "no boxes"  # the targets of the group photo: "service, no boxes", "naive, no boxes"


def machine_description(provider: str) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    described = f"{os.cpu_count()} × {cpu}, {platform.system()} {platform.release()}"
    if provider != "cpu" and shutil.which("nvidia-smi"):
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        described += f"; GPU: {gpus.splitlines()[0] if gpus else 'unknown'}"
    return described


def run_bench(config: BenchConfig) -> BenchReport:
    """Every point is measured in `rounds` short slices, interleaved (limit; service and naive at
    each concurrency, back to back; then again), and the slices are pooled: a slow spell of a
    shared machine then touches all three alike instead of biasing whichever stage it fell on."""
    config.out_dir.mkdir(parents=True, exist_ok=True)
    # The service's settings, as its environment will set them.
    settings = Settings(
        **{name.removeprefix("DIPR_").lower(): v for name, v in config.service_env.items()}
    )
    # TensorRT: one profile up to the largest batch measured (the service's stops at its own).
    tensorrt = TensorrtOptions(settings.tensorrt_cache_dir, max(config.batch_sizes) * len(GROUP))
    backend = OnnxBackend(
        config.model, config.provider, settings.device_id, settings.intra_op_threads, tensorrt
    )
    # Both ways the service runs batches: alone on every core, and side by side (CPU).
    workers = backend.configure_workers(settings.inference_workers, settings.intra_op_threads)
    modes = [(backend.infer, 1)] + ([(backend.infer_alongside, workers)] if workers > 1 else [])
    size = backend.info.input_size
    crop = model_input(config.photo.read_bytes(), size)
    preprocess = measure_preprocess(config.photo, size)
    image = cv2.imread(str(config.photo))
    height, width = image.shape[:2]
    boxes = [[width * i / 4, 0.0, width * (i + 1) / 4, float(height)] for i in range(4)]
    photo = config.photo.read_bytes()
    one, one_type = multipart_body(config.photo.name, photo, None, config.out_dir)
    four, four_type = multipart_body(config.photo.name, photo, json.dumps([boxes]), config.out_dir)
    detection = _Detection.prepare(config, settings, backend, tensorrt) if config.detector else None

    env = {
        "DIPR_MODEL_PATH": str(config.model),
        "DIPR_PROVIDER": config.provider,
        "DIPR_LOG_FORMAT": "json",
        "DIPR_MAX_QUEUE": "1024",
        "DIPR_DETECT": "true" if config.detector else "false",
        **({"DIPR_DETECTOR_PATH": str(config.detector)} if config.detector else {}),
        **config.service_env,
    }
    naive_command = [sys.executable, "-m", "dipr.benchmarks.naive", "--model", str(config.model)]
    naive_command += ["--provider", config.provider]
    if config.detector:
        naive_command += ["--detector", str(config.detector)]
    service_port, naive_port = free_port(), free_port()
    serve = [sys.executable, "-m", "dipr.cli", "serve", "--port", str(service_port)]
    limit_samples = {(b, n): LimitSamples() for b in config.batch_sizes for _, n in modes}
    service = {c: LoadSamples() for c in config.concurrencies}
    service_boxes = LoadSamples()
    naive = {c: LoadSamples() for c in config.concurrencies}
    with (
        ServerProcess([*serve, "--log-level", "warning"], service_port, env) as server,
        ServerProcess([*naive_command, "--port", str(naive_port)], naive_port, {}) as baseline,
    ):
        # TensorRT builds its engines before the service is ready: minutes on a first start.
        server.wait_ready("/health/ready", 1200 if config.provider == "tensorrt" else 120)
        baseline.wait_ready("/docs")
        # The photo of one person, whole: the pose model alone (no detection asked for).
        service_url, naive_url = f"{server.url}/pose?detect=false", f"{baseline.url}/pose"
        for url in (service_url, naive_url):  # first requests pay for lazy set-up: not counted
            run_hey(url, one, one_type, 2, 1.0, LoadSamples())
        if detection is not None:
            detection.warm(f"{server.url}/pose", f"{baseline.url}/pose-detect")
        limit_slice = config.limit_seconds / config.rounds
        load_slice = config.load_seconds / config.rounds
        for round_ in range(config.rounds):
            print(f"round {round_ + 1}/{config.rounds}: limit, service, naive", flush=True)
            for batch in config.batch_sizes:
                crops = np.repeat(crop[None], batch, 0)
                for infer, streams in modes:
                    time_streams(
                        lambda infer=infer, crops=crops: infer(crops),
                        batch,
                        streams,
                        limit_slice,
                        limit_samples[(batch, streams)],
                    )
            for c in config.concurrencies:
                # Service and naive back to back, in alternating order: whatever the machine
                # does over a few seconds lands on both, not on whichever came first.
                pair = [(service_url, service[c]), (naive_url, naive[c])]
                for url, samples in pair if round_ % 2 == 0 else pair[::-1]:
                    run_hey(url, one, one_type, c, load_slice, samples)
            run_hey(
                service_url, four, four_type, config.boxes_concurrency, load_slice, service_boxes
            )
            if detection is not None:
                detection.round(round_, limit_slice, load_slice)

    limit = [samples.summary(b, n) for (b, n), samples in limit_samples.items()]
    service_results = [service[c].summary("service", c, 1) for c in config.concurrencies]
    service_results.append(service_boxes.summary("service", config.boxes_concurrency, 4))
    naive_results = [naive[c].summary("naive", c, 1) for c in config.concurrencies]
    report = BenchReport(
        date=time.strftime("%Y-%m-%d"),
        machine=machine_description(config.provider),
        provider=config.provider,
        service_env=config.service_env,
        model=str(config.model),
        photo=config.photo.name,
        preprocess_ms=preprocess,
        rounds=config.rounds,
        limit=limit,
        service=service_results,
        naive=naive_results,
        ratios=ratios(limit, service_results, naive_results, preprocess, config.concurrencies),
    )
    if detection is not None:
        detection.add_to(report)
    return report


@dataclass
class _Detection:
    """The requests without boxes: the group photo through the detector and the pose model."""

    config: BenchConfig
    info: DetectorInfo
    runs: list[tuple[int, int, Callable[[], object]]]  # (images per run, streams, run)
    persons: int
    preprocess_ms: float
    body: Path
    content_type: str
    limit: dict[tuple[int, int], LimitSamples] = field(default_factory=dict)
    service: dict[int, LoadSamples] = field(default_factory=dict)
    naive: dict[int, LoadSamples] = field(default_factory=dict)
    urls: tuple[str, str] = ("", "")

    @classmethod
    def prepare(
        cls,
        config: BenchConfig,
        settings: Settings,
        pose: OnnxBackend,
        tensorrt: TensorrtOptions,
    ) -> "_Detection":
        assert config.detector is not None
        detector: OnnxBackend[DetectorInfo] = OnnxBackend(
            config.detector,
            config.provider,
            settings.device_id,
            settings.intra_op_threads,
            tensorrt,
            describe=detector_contract.describe,
        )
        data = group_photo(config.photo.parent, GROUP)
        work = detection_work(
            data,
            detector.infer,
            detector.info.input_size,
            pose.info.input_size,
            DEFAULT_MIN_PERSON_SCORE,
        )
        # One stream on the main sessions (every core); on CPU also two, each on its share.
        streams = pose.configure_workers(settings.inference_workers, settings.intra_op_threads)
        detector.configure_workers(streams, settings.intra_op_threads)
        runs = []
        for batch in config.detect_batch_sizes:
            runs.append((batch, 1, detection_run(work, batch, detector.infer, pose.infer)))
            if streams > 1:
                run = detection_run(work, batch, detector.infer_alongside, pose.infer_alongside)
                runs.append((batch, streams, run))
        body, content_type = multipart_body("group.jpg", data, None, config.out_dir)
        return cls(
            config=config,
            info=detector.info,
            runs=runs,
            persons=len(work.boxes),
            preprocess_ms=measure_detection_preprocess(
                data, work.boxes, detector.info.input_size, pose.info.input_size
            ),
            body=body,
            content_type=content_type,
            limit={(b, n): LimitSamples() for b, n, _ in runs},
            service={c: LoadSamples() for c in config.detect_concurrencies},
            naive={c: LoadSamples() for c in config.detect_concurrencies},
        )

    def warm(self, service_url: str, naive_url: str) -> None:
        self.urls = (service_url, naive_url)
        for url in self.urls:
            run_hey(url, self.body, self.content_type, 2, 1.0, LoadSamples())

    def round(self, round_: int, limit_slice: float, load_slice: float) -> None:
        for batch, streams, run in self.runs:
            time_streams(run, batch, streams, limit_slice, self.limit[(batch, streams)])
        service_url, naive_url = self.urls
        for c in self.config.detect_concurrencies:
            pair = [(service_url, self.service[c]), (naive_url, self.naive[c])]
            for url, samples in pair if round_ % 2 == 0 else pair[::-1]:
                run_hey(url, self.body, self.content_type, c, load_slice, samples)

    def add_to(self, report: BenchReport) -> None:
        report.detector = str(self.config.detector)
        report.group_persons = self.persons
        report.detection_preprocess_ms = self.preprocess_ms
        report.detection_limit = [s.summary(b, n) for (b, n), s in self.limit.items()]
        concurrencies = self.config.detect_concurrencies
        for c in concurrencies:
            report.service.append(self.service[c].summary(f"service, {NO_BOXES}", c, self.persons))
            report.naive.append(self.naive[c].summary(f"naive, {NO_BOXES}", c, self.persons))
        report.ratios.update(
            detection_ratios(report, concurrencies, self.persons, self.preprocess_ms)
        )


def ratios(
    limit: list[LimitResult],
    service: list[LoadResult],
    naive: list[LoadResult],
    preprocess_ms: float,
    concurrencies: list[int],
) -> dict[str, float]:
    best_limit = max(r.images_per_s for r in limit)
    batch1 = next(r for r in limit if r.batch_size == 1 and r.streams == 1)

    def at(series: list[LoadResult], concurrency: int) -> LoadResult:
        return next(r for r in series if r.concurrency == concurrency and r.target in ONE_PERSON)

    mid = 32 if 32 in concurrencies else max(concurrencies)
    return {
        f"service_c{mid}_images_per_s_over_limit_best": at(service, mid).crops_per_s / best_limit,
        "service_best_images_per_s_over_limit_best": max(
            r.crops_per_s for r in service if r.target in ONE_PERSON
        )
        / best_limit,
        f"service_c{mid}_p99_over_naive_p99": at(service, mid).p99_ms / at(naive, mid).p99_ms,
        f"service_c{mid}_images_per_s_over_naive": at(service, mid).crops_per_s
        / at(naive, mid).crops_per_s,
        "service_c1_p50_minus_limit_b1_p50_minus_preprocess_ms": at(service, 1).p50_ms
        - batch1.p50_ms
        - preprocess_ms,
    }


def detection_ratios(
    report: BenchReport, concurrencies: list[int], persons: int, preprocess_ms: float
) -> dict[str, float]:
    """Images without boxes: the service against ORT alone doing the same work (the detector on
    a batch of images, then the pose model on their persons' crops) and against naive."""
    best_limit = max(r.images_per_s for r in report.detection_limit)
    alone = next(r for r in report.detection_limit if r.batch_size == 1 and r.streams == 1)

    def at(series: list[LoadResult], concurrency: int) -> LoadResult:
        return next(
            r for r in series if r.concurrency == concurrency and r.target.endswith(NO_BOXES)
        )

    mid = 32 if 32 in concurrencies else max(concurrencies)
    service, naive = at(report.service, mid), at(report.naive, mid)
    return {
        f"no_boxes_service_c{mid}_images_per_s_over_limit_best": service.requests_per_s
        / best_limit,
        f"no_boxes_service_c{mid}_images_per_s_over_naive": service.requests_per_s
        / naive.requests_per_s,
        "no_boxes_service_c1_p50_minus_limit_b1_p50_minus_preprocess_ms": at(
            report.service, 1
        ).p50_ms
        - alone.p50_ms
        - preprocess_ms,
    }


def report_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2, default=str)
