"""One benchmark run: the limit, the service and the naive baseline, side by side, same machine,
same model, same photo. Loopback only; every stage is bounded in time."""

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dipr.benchmarks.limit import (
    LimitResult,
    LimitSamples,
    measure_preprocess,
    model_input,
    time_streams,
)
from dipr.benchmarks.load import LoadResult, LoadSamples, multipart_body, run_hey
from dipr.benchmarks.servers import ServerProcess, free_port
from dipr.service.backend import OnnxBackend, TensorrtOptions
from dipr.service.settings import Settings


@dataclass
class BenchConfig:
    model: Path
    photo: Path
    out_dir: Path
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    concurrencies: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    boxes_concurrency: int = 32
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
    tensorrt = TensorrtOptions(settings.tensorrt_cache_dir, max(config.batch_sizes))
    backend = OnnxBackend(config.model, config.provider, 0, settings.intra_op_threads, tensorrt)
    # Both ways the service runs batches: alone on every core, and side by side (CPU).
    workers = backend.configure_workers(settings.inference_workers, settings.intra_op_threads)
    modes = [(backend.infer, 1)] + ([(backend.infer_alongside, workers)] if workers > 1 else [])
    size = backend.info.input_size
    crop = model_input(config.photo.read_bytes(), size)
    preprocess = measure_preprocess(config.photo, size)
    image = cv2.imread(str(config.photo))
    height, width = image.shape[:2]
    boxes = [[width * i / 4, 0.0, width * (i + 1) / 4, float(height)] for i in range(4)]
    one, one_type = multipart_body(config.photo, None, config.out_dir)
    four, four_type = multipart_body(config.photo, json.dumps([boxes]), config.out_dir)

    env = {
        "DIPR_MODEL_PATH": str(config.model),
        "DIPR_PROVIDER": config.provider,
        "DIPR_LOG_FORMAT": "json",
        "DIPR_MAX_QUEUE": "1024",
        **config.service_env,
    }
    service_port, naive_port = free_port(), free_port()
    limit_samples = {(b, n): LimitSamples() for b in config.batch_sizes for _, n in modes}
    service = {c: LoadSamples() for c in config.concurrencies}
    service_boxes = LoadSamples()
    naive = {c: LoadSamples() for c in config.concurrencies}
    with (
        ServerProcess(
            [
                sys.executable,
                "-m",
                "dipr.cli",
                "serve",
                "--port",
                str(service_port),
                "--log-level",
                "warning",
            ],
            service_port,
            env,
        ) as server,
        ServerProcess(
            [
                sys.executable,
                "-m",
                "dipr.benchmarks.naive",
                "--port",
                str(naive_port),
                "--model",
                str(config.model),
                "--provider",
                config.provider,
            ],
            naive_port,
            {},
        ) as baseline,
    ):
        server.wait_ready("/health/ready")
        baseline.wait_ready("/docs")
        service_url, naive_url = f"{server.url}/pose", f"{baseline.url}/pose"
        for url in (service_url, naive_url):  # first requests pay for lazy set-up: not counted
            run_hey(url, one, one_type, 2, 1.0, LoadSamples())
        limit_slice = config.limit_seconds / config.rounds
        load_slice = config.load_seconds / config.rounds
        for round_ in range(config.rounds):
            print(f"round {round_ + 1}/{config.rounds}: limit, service, naive", flush=True)
            for batch in config.batch_sizes:
                crops = np.repeat(crop[None], batch, 0)
                for infer, streams in modes:
                    time_streams(
                        infer, crops, streams, limit_slice, limit_samples[(batch, streams)]
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

    limit = [samples.summary(b, n) for (b, n), samples in limit_samples.items()]
    service_results = [service[c].summary("service", c, 1) for c in config.concurrencies]
    service_results.append(service_boxes.summary("service", config.boxes_concurrency, 4))
    naive_results = [naive[c].summary("naive", c, 1) for c in config.concurrencies]
    return BenchReport(
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
        return next(r for r in series if r.concurrency == concurrency and r.crops_per_request == 1)

    mid = 32 if 32 in concurrencies else max(concurrencies)
    return {
        f"service_c{mid}_images_per_s_over_limit_best": at(service, mid).crops_per_s / best_limit,
        "service_best_images_per_s_over_limit_best": max(r.crops_per_s for r in service)
        / best_limit,
        f"service_c{mid}_p99_over_naive_p99": at(service, mid).p99_ms / at(naive, mid).p99_ms,
        f"service_c{mid}_images_per_s_over_naive": at(service, mid).crops_per_s
        / at(naive, mid).crops_per_s,
        "service_c1_p50_minus_limit_b1_p50_minus_preprocess_ms": at(service, 1).p50_ms
        - batch1.p50_ms
        - preprocess_ms,
    }


def report_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2, default=str)
