"""One benchmark run: the limit, the service and the naive baseline, side by side, same machine,
same model, same photo. Loopback only; every stage is bounded in time."""

import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import httpx

from dipr.benchmarks.limit import LimitResult, measure_limit, measure_preprocess, model_input
from dipr.benchmarks.load import LoadResult, multipart_body, run_hey
from dipr.service.backend import OnnxBackend
from dipr.service.settings import Settings


@dataclass
class BenchConfig:
    model: Path
    photo: Path
    out_dir: Path
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    concurrencies: list[int] = field(default_factory=lambda: [1, 8, 32, 64])
    boxes_concurrency: int = 32
    limit_seconds: float = 4.0
    load_seconds: float = 10.0
    service_env: dict[str, str] = field(default_factory=dict)


@dataclass
class BenchReport:
    date: str
    machine: str
    model: str
    photo: str
    preprocess_ms: float
    limit: list[LimitResult]
    service: list[LoadResult]
    naive: list[LoadResult]
    ratios: dict[str, float]


def machine_description() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} × {cpu}, {platform.system()} {platform.release()}"


class ServerProcess:
    """A server on a free loopback port, stopped on exit."""

    def __init__(self, command: list[str], port: int, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready(self, path: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.url} not ready in {timeout} s")

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_series(url: str, config: BenchConfig, target: str) -> list[LoadResult]:
    body, content_type = multipart_body(config.photo, None, config.out_dir)
    # A short warm-up so that no series pays for first-request costs.
    run_hey(url, body, content_type, 2, 1.0, target, 1)
    return [
        run_hey(url, body, content_type, c, config.load_seconds, target, 1)
        for c in config.concurrencies
    ]


def run_bench(config: BenchConfig) -> BenchReport:
    config.out_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(model_path=config.model, provider="cpu")
    backend = OnnxBackend(config.model, "cpu", intra_op_threads=settings.intra_op_threads)
    size = backend.info.input_size
    print(f"limit: ORT alone, batch {config.batch_sizes}", flush=True)
    limit = measure_limit(
        backend, config.batch_sizes, config.limit_seconds, model_input(config.photo, size)
    )
    preprocess = measure_preprocess(config.photo, size)
    del backend  # its threads would compete with the servers

    env = {
        "DIPR_MODEL_PATH": str(config.model),
        "DIPR_PROVIDER": "cpu",
        "DIPR_LOG_FORMAT": "json",
        "DIPR_MAX_QUEUE": "1024",
        **config.service_env,
    }
    port = free_port()
    with ServerProcess(
        [sys.executable, "-m", "dipr.cli", "serve", "--port", str(port), "--log-level", "warning"],
        port,
        env,
    ) as server:
        server.wait_ready("/health/ready")
        print("service: closed-loop load", config.concurrencies, flush=True)
        service = load_series(f"{server.url}/pose", config, "service")
        image = cv2.imread(str(config.photo))
        height, width = image.shape[:2]
        boxes = [[width * i / 4, 0.0, width * (i + 1) / 4, float(height)] for i in range(4)]
        body, content_type = multipart_body(config.photo, json.dumps([boxes]), config.out_dir)
        service.append(
            run_hey(
                f"{server.url}/pose",
                body,
                content_type,
                config.boxes_concurrency,
                config.load_seconds,
                "service",
                4,
            )
        )

    port = free_port()
    with ServerProcess(
        [
            sys.executable,
            "-m",
            "dipr.benchmarks.naive",
            "--port",
            str(port),
            "--model",
            str(config.model),
        ],
        port,
        {},
    ) as naive_server:
        naive_server.wait_ready("/docs")
        print("naive: closed-loop load", config.concurrencies, flush=True)
        naive = load_series(f"{naive_server.url}/pose", config, "naive")

    best_limit = max(r.images_per_s for r in limit)
    batch1 = next(r for r in limit if r.batch_size == 1)

    def at(series: list[LoadResult], concurrency: int) -> LoadResult:
        return next(r for r in series if r.concurrency == concurrency and r.crops_per_request == 1)

    top = max(config.concurrencies)
    mid = 32 if 32 in config.concurrencies else top
    ratios = {
        f"service_c{mid}_images_per_s_over_limit_best": at(service, mid).crops_per_s / best_limit,
        "service_best_images_per_s_over_limit_best": max(r.crops_per_s for r in service)
        / best_limit,
        f"service_c{mid}_p99_over_naive_p99": at(service, mid).p99_ms / at(naive, mid).p99_ms,
        f"service_c{mid}_images_per_s_over_naive": at(service, mid).crops_per_s
        / at(naive, mid).crops_per_s,
        "service_c1_p50_minus_limit_b1_p50_minus_preprocess_ms": at(service, 1).p50_ms
        - batch1.p50_ms
        - preprocess,
    }
    return BenchReport(
        date=time.strftime("%Y-%m-%d"),
        machine=machine_description(),
        model=str(config.model),
        photo=config.photo.name,
        preprocess_ms=preprocess,
        limit=limit,
        service=service,
        naive=naive,
        ratios=ratios,
    )


def report_json(report: BenchReport) -> str:
    return json.dumps(asdict(report), indent=2, default=str)
