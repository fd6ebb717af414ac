"""The front end's own cost: the service with a null model (`null_model.py`: the pose contract,
no network), under closed-loop load, its CPU time per answered request against the floor of the
same photo, decode + warp, measured in the same run.

- The service, in its two layouts of several processes, each with 1 and 2 of them, all four
  running through the whole run on free loopback ports: `dipr serve --workers N` (uvicorn's
  workers, each a whole service), and `dipr serve` with DIPR_FRONTEND_PROCESSES=N (N front-end
  processes that decode and crop, feeding one inference process through shared memory). The
  model the null model, detection off, every other setting its default (logs at level info,
  written and discarded: access lines are part of the cost).
- Its CPU: user + system time of the server's processes (every thread of every process it
  started: uvicorn's supervisor and workers, the front-ends and the inference process) from
  /proc/<pid>/stat, over a slice of load, divided by the requests answered in it. CPU time, not
  wall time: on a shared 2-core machine it is far less noisy, and `hey` itself (not counted)
  shares the cores.
- The floor: the core functions the service's decode and crop stages call
  (`decode_for_boxes`, `crop_boxes`, with the service's padding and reduced decoding), on the
  same photo and box, timed as CPU time over many iterations in this process.
- Two requests, one image each: the photo with its person's box (the path that matters), and
  without a box (a whole-image crop). Every point is measured in `rounds` short slices,
  interleaved (floor, then each request on each server, the servers' order alternating), pooled.
"""

import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dipr.benchmarks.load import LoadSamples, multipart_body, run_hey
from dipr.benchmarks.null_model import reference_info, write_null_model
from dipr.benchmarks.servers import ServerProcess, free_port
from dipr.core.crops import Box
from dipr.core.images import read_header
from dipr.core.prepare import crop_boxes, decode_for_boxes
from dipr.service.settings import Settings

# The astronaut's box in tests/fixtures/photos/astronaut.jpg (the detector's, as in the OpenAPI
# example); for another photo, the whole picture.
ASTRONAUT_BOX: Box = (17.3, 11.4, 361.3, 508.7)
GOAL_RATIO = 1.5  # issue #16: front end CPU per request at most 1.5× decode + warp
BOX, NO_BOX = "box", "no box"
# The layouts of several processes: uvicorn's workers (--workers), or front-end processes feeding
# one inference process (DIPR_FRONTEND_PROCESSES).
WORKERS, FRONTENDS = "workers", "frontends"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class FrontendConfig:
    photo: Path
    reference_model: Path  # the null model takes its contract
    box: Box | None = None  # None: ASTRONAUT_BOX for astronaut.jpg, else the whole picture
    workers: tuple[int, ...] = (1, 2)  # --workers N
    frontends: tuple[int, ...] = (1, 2)  # DIPR_FRONTEND_PROCESSES=N
    concurrency: int = 8
    slice_seconds: float = 3.0
    rounds: int = 5
    floor_iterations: int = 100  # per round and request kind
    service_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FrontendPoint:
    request: str  # BOX or NO_BOX
    layout: str  # WORKERS or FRONTENDS
    processes: int  # of that layout: workers, or front-end processes
    floor_ms: float  # decode + warp, CPU ms per image
    cpu_ms_per_request: float  # the server's CPU time per answered request
    ratio: float  # cpu_ms_per_request / floor_ms
    requests_per_s: float
    p50_ms: float
    requests: int
    errors: int


@dataclass
class FrontendReport:
    date: str
    photo: str
    box: Box
    concurrency: int
    rounds: int
    slice_seconds: float
    points: list[FrontendPoint]

    def point(self, request: str, layout: str, processes: int) -> FrontendPoint:
        return next(
            p
            for p in self.points
            if (p.request, p.layout, p.processes) == (request, layout, processes)
        )


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (uvicorn's workers, their helpers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process tree at `pid`, every thread, so far."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLOCK_TICKS


@dataclass
class _Samples:
    load: LoadSamples = field(default_factory=LoadSamples)
    cpu_s: float = 0.0


@dataclass
class _Floor:
    """decode + warp of one request's image, as the service's stages run it."""

    data: bytes
    boxes: list[Box] | None
    input_size: tuple[int, int]
    padding: float
    reduced: bool
    cpu_s: float = 0.0
    iterations: int = 0

    def run(self, iterations: int) -> None:
        header = read_header(self.data, "image/jpeg", 2**40)  # microseconds: not the floor's
        started = time.process_time()
        for _ in range(iterations):
            decoded = decode_for_boxes(
                self.data,
                header,
                self.boxes,
                self.input_size,
                padding=self.padding,
                reduced=self.reduced,
            )
            crop_boxes(decoded, self.boxes, self.input_size, padding=self.padding)
        self.cpu_s += time.process_time() - started
        self.iterations += iterations

    @property
    def ms(self) -> float:
        return self.cpu_s / self.iterations * 1000


def run_frontend(config: FrontendConfig) -> FrontendReport:
    settings = Settings(
        **{name.removeprefix("DIPR_").lower(): v for name, v in config.service_env.items()}
    )
    photo = config.photo.read_bytes()
    header = read_header(photo, None, 2**40)
    box = config.box or (
        ASTRONAUT_BOX
        if config.photo.name == "astronaut.jpg"
        else (0.0, 0.0, float(header.width), float(header.height))
    )
    with tempfile.TemporaryDirectory(prefix="dipr-frontend-") as folder:
        work = Path(folder)
        model = write_null_model(config.reference_model, work / "null-pose.onnx")
        input_size = reference_info(model).input_size
        bodies = {
            BOX: multipart_body(config.photo.name, photo, json.dumps([[list(box)]]), work),
            NO_BOX: multipart_body(config.photo.name, photo, None, work),
        }
        floors = {
            request: _Floor(photo, boxes, input_size, settings.box_padding, settings.reduced_decode)
            for request, boxes in ((BOX, [box]), (NO_BOX, None))
        }
        env = {
            "DIPR_MODEL_PATH": str(model),
            "DIPR_DETECT": "false",
            "DIPR_DRAIN_DELAY_S": "0",
            **config.service_env,
        }
        servers: dict[tuple[str, int], ServerProcess] = {}
        with ExitStack() as running:  # every server stopped on the way out, whatever happens
            for layout, processes in _layouts(config):
                port = free_port()
                command = [sys.executable, "-m", "dipr.cli", "serve", "--port", str(port)]
                command += ["--log-level", "info"]
                if layout == WORKERS:
                    command += ["--workers", str(processes)]
                frontends = processes if layout == FRONTENDS else 0
                server_env = {**env, "DIPR_FRONTEND_PROCESSES": str(frontends)}
                server = ServerProcess(command, port, server_env)
                servers[(layout, processes)] = running.enter_context(server)
            for server in servers.values():
                server.wait_ready("/health/ready")
                _warm(server.url, bodies, config.concurrency)
            samples = {(r, key): _Samples() for r in bodies for key in servers}
            for round_ in range(config.rounds):
                print(f"front end round {round_ + 1}/{config.rounds}", flush=True)
                for floor in floors.values():
                    floor.run(config.floor_iterations)
                order = list(servers.items())
                for key, server in order if round_ % 2 == 0 else order[::-1]:
                    for request, (body, content_type) in bodies.items():
                        into = samples[(request, key)]
                        before = cpu_seconds(server.process.pid)
                        run_hey(
                            f"{server.url}/pose",
                            body,
                            content_type,
                            config.concurrency,
                            config.slice_seconds,
                            into.load,
                        )
                        into.cpu_s += cpu_seconds(server.process.pid) - before
    points = []
    for (request, (layout, processes)), sample in samples.items():
        summary = sample.load.summary(f"frontend {request}", config.concurrency, 1)
        answered = len(sample.load.latencies_s) + sample.load.errors
        cpu_ms = sample.cpu_s / max(answered, 1) * 1000
        floor_ms = floors[request].ms
        points.append(
            FrontendPoint(
                request,
                layout,
                processes,
                floor_ms,
                cpu_ms,
                cpu_ms / floor_ms,
                summary.requests_per_s,
                summary.p50_ms,
                summary.requests,
                summary.errors,
            )
        )
    return FrontendReport(
        time.strftime("%Y-%m-%d"),
        config.photo.name,
        box,
        config.concurrency,
        config.rounds,
        config.slice_seconds,
        points,
    )


def _layouts(config: FrontendConfig) -> list[tuple[str, int]]:
    return [(WORKERS, n) for n in config.workers] + [(FRONTENDS, n) for n in config.frontends]


def _warm(url: str, bodies: dict[str, tuple[Path, str]], concurrency: int) -> None:
    """First requests pay for lazy set-up (and with several workers, one may still be loading):
    load until a second of it answers every request, for at most 30 s."""
    deadline = time.monotonic() + 30
    while True:
        warm = LoadSamples()
        for body, content_type in bodies.values():
            run_hey(f"{url}/pose", body, content_type, concurrency, 1.0, warm)
        if warm.errors == 0 or time.monotonic() > deadline:
            return


def markdown(report: FrontendReport) -> str:
    box = ", ".join(f"{v:g}" for v in report.box)
    lines = [
        f"Front end {report.date}: `dipr serve` with a null model (the pose contract, no network; "
        f"`benchmarks/null_model.py`), detection off, photo `{report.photo}` one image per "
        f"request, with its box [{box}] or without; `hey` at concurrency {report.concurrency}; "
        f"the server's CPU time (every process and thread, /proc) per answered request against "
        f"decode + warp of the same image (the core functions the stages call, CPU time); "
        f"{report.rounds} interleaved rounds of {report.slice_seconds:g} s per point. Layouts: "
        f"`{WORKERS}` is `--workers N` (N whole services), `{FRONTENDS}` is "
        f"DIPR_FRONTEND_PROCESSES=N (N front-end processes, one inference process). "
        f"Goal: ratio ≤ {GOAL_RATIO:g}.",
        "",
        "| request | layout | processes | decode + warp ms | front end CPU ms/request | ratio "
        "| requests/s | p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in report.points:
        lines.append(
            f"| {p.request} | {p.layout} | {p.processes} | {p.floor_ms:.2f} | "
            f"{p.cpu_ms_per_request:.2f} | {p.ratio:.2f} | {p.requests_per_s:.1f} | "
            f"{p.p50_ms:.1f} |"
        )
    scaling = _scaling(report)
    if scaling:
        lines += ["", "Throughput with more processes: " + "; ".join(scaling) + "."]
    return "\n".join(lines) + "\n"


def _scaling(report: FrontendReport) -> list[str]:
    """Requests/s of the most processes over the fewest, per layout and request."""
    lines = []
    for layout in (WORKERS, FRONTENDS):
        for request in (BOX, NO_BOX):
            points = sorted(
                (p for p in report.points if (p.layout, p.request) == (layout, request)),
                key=lambda p: p.processes,
            )
            if len(points) > 1 and points[0].requests_per_s > 0:
                gain = points[-1].requests_per_s / points[0].requests_per_s
                lines.append(
                    f"{layout} {points[-1].processes} vs {points[0].processes}, {request}: "
                    f"×{gain:.2f}"
                )
    return lines


def report_json(report: FrontendReport) -> str:
    return json.dumps(asdict(report), indent=2)
