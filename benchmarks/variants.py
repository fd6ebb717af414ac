"""The default model's variants side by side (issue #14): ONNX Runtime alone (latency of one crop,
throughput at batch 8) for fp32, int8, flip and int8+flip, and the service serving fp32 and int8
under the same load, every point measured in interleaved slices."""

import contextlib
import json
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dipr.benchmarks.limit import LimitSamples, model_input, time_streams
from dipr.benchmarks.load import LoadResult, LoadSamples, multipart_body, run_hey
from dipr.benchmarks.servers import ServerProcess, free_port
from dipr.export.variants import export_variants
from dipr.service.backend import OnnxBackend

THROUGHPUT_BATCH = 8
SERVED = ("fp32", "int8", "int8+flip")  # through the service


@dataclass
class VariantsConfig:
    photo: Path
    box: list[float]  # the photo's person, as the requests send it
    rounds: int = 3
    slice_seconds: float = 3.0
    concurrency: int = 8
    service_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantRow:
    variant: str
    latency_ms: float  # p50 of one crop, ORT alone
    images_per_s: float  # ORT alone at THROUGHPUT_BATCH
    service: LoadResult | None  # the service serving it, one image with its box per request


@dataclass(frozen=True)
class VariantsReport:
    rows: list[VariantRow]
    refused: dict[str, str]
    rounds: int

    def row(self, variant: str) -> VariantRow | None:
        return next((r for r in self.rows if r.variant == variant), None)


def run_variants(config: VariantsConfig) -> VariantsReport:
    with tempfile.TemporaryDirectory(prefix="dipr-bench-variants-") as folder:
        variants = export_variants(Path(folder), lambda line: print(line, file=sys.stderr))
        backends = {name: OnnxBackend(path, "cpu") for name, path in variants.models.items()}
        size = next(iter(backends.values())).info.input_size
        crop = model_input(config.photo.read_bytes(), size)
        single = {name: LimitSamples() for name in backends}
        batched = {name: LimitSamples() for name in backends}
        served = {name: LoadSamples() for name in SERVED if name in variants.models}
        body, content_type = multipart_body(
            config.photo.name, config.photo.read_bytes(), json.dumps([[config.box]]), Path(folder)
        )
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(_server(variants.models[name], config.service_env))
                for name in served
            }
            for server in servers.values():
                server.wait_ready("/health/ready")
                run_hey(f"{server.url}/pose", body, content_type, 2, 1.0, LoadSamples())
            one = crop[None]
            eight = np.repeat(one, THROUGHPUT_BATCH, 0)
            for round_ in range(config.rounds):
                print(f"variants round {round_ + 1}/{config.rounds}", file=sys.stderr, flush=True)
                order = list(backends) if round_ % 2 == 0 else list(backends)[::-1]
                for name in order:
                    infer = backends[name].infer
                    half = config.slice_seconds / 2
                    time_streams(lambda infer=infer: infer(one), 1, 1, half, single[name])
                    time_streams(
                        lambda infer=infer: infer(eight), THROUGHPUT_BATCH, 1, half, batched[name]
                    )
                for name in order:
                    if name in servers:
                        url = f"{servers[name].url}/pose"
                        samples = served[name]
                        run_hey(
                            url,
                            body,
                            content_type,
                            config.concurrency,
                            config.slice_seconds,
                            samples,
                        )
    rows = [
        VariantRow(
            variant=name,
            latency_ms=single[name].summary(1, 1).p50_ms,
            images_per_s=batched[name].summary(THROUGHPUT_BATCH, 1).images_per_s,
            service=(served[name].summary(name, config.concurrency, 1) if name in served else None),
        )
        for name in backends
    ]
    return VariantsReport(rows, variants.refused, config.rounds)


def _server(model: Path, service_env: dict[str, str]) -> ServerProcess:
    port = free_port()
    command = [sys.executable, "-m", "dipr.cli", "serve", "--port", str(port)]
    env = {
        "DIPR_MODEL_PATH": str(model),
        "DIPR_PROVIDER": "cpu",
        "DIPR_DETECT": "false",
        "DIPR_LOG_FORMAT": "json",
        **service_env,
    }
    return ServerProcess([*command, "--log-level", "warning"], port, env)


def markdown(report: VariantsReport) -> str:
    fp32 = report.row("fp32")
    lines = [
        f"ONNX Runtime alone (the service's CPU session settings): p50 latency of one crop, "
        f"images/s at batch {THROUGHPUT_BATCH}; the service: one image with its box per request, "
        f"closed loop; {report.rounds} interleaved rounds. Ratios against fp32.",
        "",
        "| variant | latency ms (×fp32) | images/s alone (×fp32) | service images/s (×fp32) |",
        "|---|---:|---:|---:|",
    ]
    for row in report.rows:
        service = "" if row.service is None else f"{row.service.requests_per_s:.1f}"
        latency, alone = f"{row.latency_ms:.1f}", f"{row.images_per_s:.1f}"
        if fp32 is not None:
            latency += f" ({row.latency_ms / fp32.latency_ms:.2f}×)"
            alone += f" ({row.images_per_s / fp32.images_per_s:.2f}×)"
            if row.service is not None and fp32.service is not None:
                service += f" ({row.service.requests_per_s / fp32.service.requests_per_s:.2f}×)"
        lines.append(f"| {row.variant} | {latency} | {alone} | {service} |")
    lines += [f"\n{name}: not measured: {reason}" for name, reason in report.refused.items()]
    return "\n".join(lines) + "\n"


def report_json(report: VariantsReport) -> str:
    return json.dumps(asdict(report), indent=2) + "\n"
