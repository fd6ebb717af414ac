"""Closed-loop HTTP load with `hey` (Debian package hey): c workers, each sending its next request
as soon as the last one is answered, for a fixed time. Per-request times come back as CSV, so the
percentiles are computed here from every request."""

import csv
import io
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dipr.service.client import Part, encode_multipart


@dataclass(frozen=True)
class LoadResult:
    target: str
    concurrency: int
    crops_per_request: int  # person boxes per request (one image each)
    requests: int
    errors: int
    requests_per_s: float  # = images/s: one image per request
    crops_per_s: float  # what the model ran: comparable with the limit's images/s
    p50_ms: float
    p95_ms: float
    p99_ms: float


def multipart_body(name: str, jpeg: bytes, boxes: str | None, folder: Path) -> tuple[Path, str]:
    """A multipart/form-data body with the JPEG in `image` (and `boxes`), in a file of `folder`
    (hey posts a file), and its content type."""
    parts = [Part("image", jpeg, name, "image/jpeg")]
    if boxes is not None:
        parts.append(Part("boxes", boxes.encode()))
    body, content_type = encode_multipart(parts)
    path = folder / f"body-{uuid.uuid4().hex}.bin"
    path.write_bytes(body)
    return path, content_type


@dataclass
class LoadSamples:
    """What one or more runs at one load point measured, pooled."""

    latencies_s: list[float] = field(default_factory=list)  # successful requests
    errors: int = 0
    seconds: float = 0.0  # time under load, summed over runs

    def summary(self, target: str, concurrency: int, crops_per_request: int) -> LoadResult:
        if not self.latencies_s:
            raise RuntimeError(f"{target} c={concurrency}: no successful request")
        ok = len(self.latencies_s)
        p50, p95, p99 = (
            float(v) for v in np.percentile(np.array(self.latencies_s) * 1000, [50, 95, 99])
        )
        return LoadResult(
            target,
            concurrency,
            crops_per_request,
            ok + self.errors,
            self.errors,
            ok / self.seconds,
            ok * crops_per_request / self.seconds,
            p50,
            p95,
            p99,
        )


def run_hey(
    url: str,
    body: Path,
    content_type: str,
    concurrency: int,
    seconds: float,
    into: LoadSamples,
    hey_cpus: int = 1,
) -> None:
    """One closed-loop run; its samples are added to `into`."""
    command = [
        "hey",
        "-z",
        f"{seconds}s",
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-D",
        str(body),
        "-T",
        content_type,
        "-t",
        "60",
        "-cpus",
        str(hey_cpus),
        "-o",
        "csv",
        url,
    ]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=seconds + 120
    ).stdout
    rows = list(csv.DictReader(io.StringIO(output)))
    into.latencies_s += [float(r["response-time"]) for r in rows if r["status-code"] == "200"]
    into.errors += sum(r["status-code"] != "200" for r in rows)
    # hey's offsets are send times from the start: the span covers the whole run.
    into.seconds += max(
        (float(r["offset"]) + float(r["response-time"]) for r in rows), default=seconds
    )
