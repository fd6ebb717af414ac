"""`make gpu-check` (issue #16): one prepared run that says whether a GPU machine serves as it
should, in under 8 minutes (`--minutes`), every stage bounded by its own deadline:

1. placement: ONNX Runtime's providers, and the graph nodes that do not run on CUDA (from a
   profiled run: ONNX Runtime's profile records the provider of every node it ran), for the
   service's session (dynamic batch) and for a fixed-batch one (what CUDA graphs need);
2. parity: keypoints on CUDA against the CPU for the fp32 model and an fp16 export (`dipr export
   --fp16`, when torch is installed), on the fixture photos: the largest difference in pixels
   (goal: fp16 on the GPU within 0.5 px of fp32). The export's own parity check runs on the CPU,
   which computes fp16 graphs in fp32: this is the check of real fp16 arithmetic;
3. sweep: images/s at batch 1–64 for four ways of running the model: plain `session.run`,
   IOBinding with input and outputs resident on the device (copied from pageable memory, then
   from page-locked staging as the service does), and CUDA graphs (one session per batch size);
4. decode: JPEG decoding by OpenCV on the CPU against nvImageCodec on the GPU, wall and CPU time
   per image, one thread and several (`benchmarks/jpeg_decoders.py`);
5. service: `dipr serve` on a free loopback port (DIPR_PROVIDER=cuda), under `hey` load, against
   the best figure of ONNX Runtime alone (goal ≥ 0.85×): first in the layout recommended for a
   GPU (DIPR_FRONTEND_PROCESSES: one front-end process per core, at most 16, one inference
   process), then, in the rest of the stage's time, in the one-process layout;

and writes gpu-check.json and gpu-check.md (tables for the README).

    python -m dipr.benchmarks.gpu_check [--out DIR] [--model PATH] [--minutes N]

Without an NVIDIA GPU and onnxruntime-gpu it refuses at once (exit status 2). `--provider cpu`
runs every stage on the CPU at tiny batch sizes instead (a dry run of the machinery, for tests:
its report says it holds no GPU figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dipr.benchmarks.jpeg_decoders import decode_summary, decode_table
from dipr.models.registry import DEFAULT_ONNX

if TYPE_CHECKING:
    import onnxruntime as ort

    from dipr.service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests" / "fixtures" / "photos"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DRY_RUN_NOTE = "CPU dry run, not GPU figures"
FP16_GOAL_PX = 0.5  # fp16 on the GPU against fp32, largest keypoint difference
SERVICE_GOAL = 0.85  # the service's images/s over the best of ONNX Runtime alone
MODES = ("run", "iobinding", "iobinding_pinned", "cuda_graph")
MODE_TITLES = {
    "run": "session.run",
    "iobinding": "IOBinding, device-resident",
    "iobinding_pinned": "IOBinding + page-locked staging",
    "cuda_graph": "CUDA graph (+ page-locked staging)",
}
# Seconds of each stage in the 8-minute budget (scaled with --minutes); 30 s are left over for
# start-up, the report, the last server's shutdown and a slow machine. The service stage starts
# two servers (two layouts), each loading and warming up the model.
STAGE_BUDGETS_S = {
    "placement": 30.0,
    "parity": 110.0,
    "sweep": 140.0,
    "decode": 30.0,
    "service": 140.0,
}
DEFAULT_MINUTES = 8.0
FRONT_ENDS = "front-end processes"
ONE_PROCESS = "one process"


@dataclass(frozen=True)
class Plan:
    """How big each stage is: a GPU run, or the CPU dry run (the same code, small figures)."""

    provider: str  # "cuda", or "cpu" for the dry run
    batch_sizes: tuple[int, ...]
    seconds_per_point: float  # timed runs per sweep point, after its warm-up
    service_env: dict[str, str]
    # (concurrency, person boxes per request; 0: the whole photo with ?detect=false)
    loads: tuple[tuple[int, int], ...]
    seconds_per_load: float
    hey_cpus: int  # enough that the load generator is not what limits the service
    # Most front-end processes in the front-end layout (one per usable core up to this): a cap on
    # the memory of processes that mostly decode JPEGs, not a measured optimum.
    frontend_cap: int

    @property
    def dry_run(self) -> bool:
        return self.provider == "cpu"

    @property
    def device(self) -> str:
        """ONNX Runtime's name for where the bound inputs and outputs live."""
        return "cpu" if self.dry_run else "cuda"


GPU_PLAN = Plan(
    provider="cuda",
    batch_sizes=(1, 2, 4, 8, 16, 32, 64),
    seconds_per_point=2.0,
    # The service as recommended on a GPU (README, The service): one inference worker (the
    # default there), batches given 2 ms to fill, up to 32 crops, padded to warmed sizes; in the
    # front-end layout (README, GPU serving layout), whose DIPR_FRONTEND_PROCESSES is set per
    # machine (`service_layouts`).
    service_env={
        "DIPR_PROVIDER": "cuda",
        "DIPR_BATCH_DELAY_MS": "2",
        "DIPR_MAX_BATCH_SIZE": "32",
        "DIPR_MAX_QUEUE": "1024",
    },
    # One photo per request is bound by HTTP and JPEG decoding; 8 and 32 boxes per request put
    # more crops through the model per request.
    loads=((64, 0), (32, 8), (16, 32)),
    seconds_per_load=12.0,
    hey_cpus=4,
    frontend_cap=16,
)
DRY_PLAN = Plan(
    provider="cpu",
    batch_sizes=(1, 2),
    seconds_per_point=0.2,
    service_env={"DIPR_PROVIDER": "cpu", "DIPR_MAX_BATCH_SIZE": "4", "DIPR_MAX_QUEUE": "64"},
    loads=((2, 0), (2, 2)),
    seconds_per_load=1.0,
    hey_cpus=1,
    frontend_cap=2,
)


class Deadline:
    """A point in time that a stage must finish by."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def passed(self) -> bool:
        return self.left() <= 0.0


# --- refusing without a GPU ---------------------------------------------------------------------


def gpu_problem() -> str | None:
    """None where an NVIDIA GPU is visible and ONNX Runtime has a CUDA provider, else the one
    line that says what is missing and what the check needs."""
    import onnxruntime as ort

    from dipr.service.preflight import gpu_visible

    available = ort.get_available_providers()
    missing = []
    if not gpu_visible():
        missing.append("no NVIDIA GPU (none in /proc/driver/nvidia/gpus, none from nvidia-smi)")
    if CUDA not in available:
        missing.append(
            f"no CUDA provider (onnxruntime {ort.__version__} offers {', '.join(available)})"
        )
    if not missing:
        return None
    return (
        f"gpu-check: {' and '.join(missing)}: it needs an NVIDIA GPU and onnxruntime-gpu in "
        "place of onnxruntime (`make gpu-check ORT=gpu` installs it; `--provider cpu` is a dry "
        "run of the machinery on the CPU, not GPU figures)"
    )


# --- stage 1: which provider runs each node -----------------------------------------------------


@dataclass(frozen=True)
class NodePlacement:
    name: str
    op: str
    provider: str


def node_placements(events: list[dict[str, Any]]) -> list[NodePlacement]:
    """Every node of a profiled run once, with the provider that ran it. ONNX Runtime's profile
    is a Chrome trace: one event per kernel run, category "Node", named `<node>_kernel_time`,
    with `args.op_name` and `args.provider` (the fence events around it carry no provider)."""
    placements: dict[str, NodePlacement] = {}
    for event in events:
        args = event.get("args") or {}
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or "provider" not in args:
            continue
        if not name.endswith("_kernel_time"):
            continue
        node = name.removesuffix("_kernel_time")
        placements.setdefault(
            node, NodePlacement(node, str(args.get("op_name", "")), args["provider"])
        )
    return list(placements.values())


def nodes_not_on(placements: list[NodePlacement], provider: str) -> list[NodePlacement]:
    return [placement for placement in placements if placement.provider != provider]


def placement_summary(placements: list[NodePlacement], provider: str) -> dict[str, Any]:
    elsewhere = nodes_not_on(placements, provider)
    return {
        "nodes": len(placements),
        "by_provider": dict(Counter(p.provider for p in placements).most_common()),
        # Copies between host and device that ONNX Runtime inserted around nodes left elsewhere.
        "copies": sum(p.op.startswith("Memcpy") for p in placements),
        "not_on_target": [asdict(p) for p in elsewhere],
        "not_on_target_by_op": dict(Counter(p.op for p in elsewhere).most_common()),
    }


def profiled_placements(
    session_factory: Callable[[ort.SessionOptions], ort.InferenceSession],
    options: ort.SessionOptions,
    batch: np.ndarray,
    folder: Path,
) -> tuple[list[str], list[NodePlacement]]:
    """The session's providers and where each node ran, from one profiled run of `batch`."""
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    session = session_factory(options)
    session.run(None, {session.get_inputs()[0].name: batch})
    profile = Path(session.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()
    return session.get_providers(), node_placements(events)


def check_placement(plan: Plan, model: Path, crops: np.ndarray, work: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from dipr.service.backend import fixed_batch_session, session_options

    target = CPU if plan.dry_run else CUDA
    providers: list[str | tuple[str, dict[str, object]]] = (
        [CPU] if plan.dry_run else [(CUDA, {"device_id": 0}), CPU]
    )
    batch = crops[:2]
    session_providers, dynamic = profiled_placements(
        lambda options: ort.InferenceSession(str(model), options, providers=providers),
        session_options(0, gpu=not plan.dry_run),
        batch,
        work,
    )
    # What a CUDA graph session gets: the batch fixed, so that shape arithmetic folds away
    # (profiled without the capture itself).
    _, fixed = profiled_placements(
        lambda options: fixed_batch_session(model, len(batch), providers, options),
        session_options(0, gpu=not plan.dry_run),
        batch,
        work,
    )
    return {
        "providers_available": ort.get_available_providers(),
        "session_providers": session_providers,
        "target": target,
        "dynamic_batch": placement_summary(dynamic, target),
        "fixed_batch": placement_summary(fixed, target),
    }


# --- stage 2: the same keypoints on the GPU as on the CPU ---------------------------------------


@dataclass(frozen=True)
class KeypointDifference:
    joints: int
    max_px: float
    mean_px: float
    joints_over_goal: int  # joints that moved by more than FP16_GOAL_PX
    max_score_difference: float


def keypoint_difference(
    reference: dict[str, np.ndarray], other: dict[str, np.ndarray], goal_px: float = FP16_GOAL_PX
) -> KeypointDifference:
    """How far `other`'s keypoints [N, 17, 2] (input pixels) are from `reference`'s: Euclidean
    distance per joint; and the largest score difference."""
    distances = np.linalg.norm(
        other["keypoints"].astype(np.float64) - reference["keypoints"].astype(np.float64), axis=-1
    )
    scores = np.abs(other["scores"].astype(np.float64) - reference["scores"].astype(np.float64))
    return KeypointDifference(
        joints=int(distances.size),
        max_px=float(distances.max()),
        mean_px=float(distances.mean()),
        joints_over_goal=int((distances > goal_px).sum()),
        max_score_difference=float(scores.max()),
    )


def fp16_model(
    args_fp16: Path | None, skip: bool, model: Path, work: Path, deadline: Deadline
) -> tuple[Path | None, str]:
    """The fp16 model to compare (given, or exported now), or None and why not."""
    if skip:
        return None, "skipped: --no-fp16"
    if args_fp16 is not None:
        return args_fp16, ""
    if model.resolve() != DEFAULT_ONNX.resolve():
        return None, "skipped: --model is not the default; pass its fp16 export as --fp16-model"
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None, (
            "skipped: `dipr export --fp16` needs torch, which is not installed "
            "(the export extra: pip install -e '.[export]'; or pass --fp16-model)"
        )
    output = work / "movenet-thunder-fp16.onnx"
    # The export's own parity check runs on the CPU (fp32 arithmetic): this stage is the real one.
    command = [sys.executable, "-m", "dipr.cli", "export", "--fp16", "--skip-parity"]
    try:
        result = subprocess.run(
            [*command, "-o", str(output)],
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline.left()),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, "skipped: `dipr export --fp16` did not finish within the stage's budget"
    if result.returncode != 0 or not output.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines()
        return None, f"skipped: `dipr export --fp16` failed: {lines[-1] if lines else '?'}"
    return output, ""


def check_parity(
    plan: Plan, model: Path, half: Path | None, why_no_half: str, crops: np.ndarray
) -> dict[str, Any]:
    """Rows: fp32 on the device against fp32 on the CPU; fp16 against fp16; fp16 on the device
    against fp32 on the CPU (the goal)."""
    from dipr.service.backend import OnnxBackend

    def outputs(path: Path, provider: str) -> dict[str, np.ndarray]:
        return OnnxBackend(path, provider).infer(crops)

    device = plan.provider
    fp32_cpu = outputs(model, "cpu")
    rows: list[dict[str, Any]] = [
        {"model": "fp32", "compared": f"{device} against cpu", "status": "ok"}
        | asdict(keypoint_difference(fp32_cpu, outputs(model, device)))
    ]
    if half is None:
        for compared in (f"{device} against cpu", f"fp16 on {device} against fp32 on cpu"):
            rows.append({"model": "fp16", "compared": compared, "status": "skipped"})
            rows[-1]["reason"] = why_no_half
        return {"photos": len(crops), "rows": rows, "fp16_max_px": None}
    half_device = outputs(half, device)
    rows.append(
        {"model": "fp16", "compared": f"{device} against cpu", "status": "ok"}
        | asdict(keypoint_difference(outputs(half, "cpu"), half_device))
    )
    goal = keypoint_difference(fp32_cpu, half_device)
    rows.append(
        {"model": "fp16", "compared": f"fp16 on {device} against fp32 on cpu", "status": "ok"}
        | asdict(goal)
    )
    return {"photos": len(crops), "rows": rows, "fp16_max_px": goal.max_px}


# --- stage 3: images/s by batch size and way of running ------------------------------------------


@dataclass
class SweepPoint:
    mode: str
    batch_size: int
    status: str  # ok, failed, skipped
    images_per_s: float | None = None
    p50_ms: float | None = None
    reason: str = ""


def time_point(run: Callable[[], object], batch_size: int, seconds: float) -> SweepPoint:
    from dipr.benchmarks.limit import time_runs

    for _ in range(2):
        run()  # first runs: allocations, cuDNN's algorithm search, graph capture
    times = time_runs(run, seconds)
    return SweepPoint(
        "",
        batch_size,
        "ok",
        images_per_s=batch_size * len(times) / sum(times),
        p50_ms=float(np.median(times) * 1000),
    )


def dry_run_staging() -> tuple[ort.OrtMemoryInfo, str]:
    """The dry run's stand-in for page-locked memory: host memory from a CPU allocator registered
    the way the CUDA provider registers its own (the same staging code, nothing page-locked)."""
    import onnxruntime as ort

    memory = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_DEVICE_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    try:
        ort.create_and_register_allocator(memory, None)
    except Exception as error:  # a second dry run in the same process
        if "already" not in str(error).lower():
            raise
    return memory, "dry run: a CPU allocator's memory stands in for page-locked memory"


class NoPinnedMemory(Exception):
    """The pinned mode cannot run: ONNX Runtime offers no page-locked memory here."""


def mode_runner(
    mode: str,
    plan: Plan,
    model: Path,
    session: ort.InferenceSession,
    batch: np.ndarray,
    pinned: ort.OrtMemoryInfo | None,
) -> Callable[[], object]:
    """One batch run the `mode` way, ready to call (sessions and buffers made here); `pinned`:
    the page-locked host memory the service stages its batches in, if any."""
    from dipr.service.backend import (
        ResidentBatch,
        cuda_graph_providers,
        fixed_batch_session,
        session_options,
    )

    if mode == "run":
        name = session.get_inputs()[0].name
        return lambda: session.run(None, {name: batch})
    if mode == "iobinding":
        resident = ResidentBatch(session, len(batch), plan.device)
        return lambda: resident.run(batch)
    if mode == "iobinding_pinned":
        if pinned is None:
            raise NoPinnedMemory
        staged = ResidentBatch(session, len(batch), plan.device, staging=pinned)
        return lambda: staged.run(batch)
    # CUDA graphs replay fixed shapes at fixed addresses, one thread per session: one session per
    # batch size. The dry run makes the same fixed-batch session on the CPU, without a graph.
    providers = [CPU] if plan.dry_run else cuda_graph_providers(0)
    options = session_options(0, gpu=not plan.dry_run)
    graph = ResidentBatch(
        fixed_batch_session(model, len(batch), providers, options),
        len(batch),
        plan.device,
        staging=pinned,  # as the service runs it
    )
    return lambda: graph.run(batch)


def check_sweep(plan: Plan, model: Path, crops: np.ndarray, deadline: Deadline) -> dict[str, Any]:
    from dipr.service.backend import OnnxBackend, pinned_memory, pinned_memory_crash

    backend = OnnxBackend(model, plan.provider)  # the service's session and its options
    crash = "" if plan.dry_run else pinned_memory_crash(0)
    if plan.dry_run:
        pinned, no_pinned = dry_run_staging()
    else:
        pinned, no_pinned = (None, crash) if crash else pinned_memory(0)
    points: list[SweepPoint] = []
    for batch_size in plan.batch_sizes:
        batch = np.ascontiguousarray(np.resize(crops, (batch_size, *crops.shape[1:])))
        for mode in MODES:
            if deadline.passed():
                points.append(SweepPoint(mode, batch_size, "skipped", reason="stage budget spent"))
                continue
            try:
                # Made per point and dropped after it: a CUDA graph session holds its memory.
                run = mode_runner(mode, plan, model, backend.session, batch, pinned)
                seconds = min(plan.seconds_per_point, deadline.left())
                point = time_point(run, batch_size, seconds)
            except NoPinnedMemory:
                point = SweepPoint("", batch_size, "skipped", reason=no_pinned)
            except Exception as error:  # e.g. a CUDA graph that cannot be captured: say so
                point = SweepPoint("", batch_size, "failed", reason=first_line(error))
            finally:
                run = None
            point.mode = mode
            points.append(point)
    measured = [p for p in points if p.images_per_s is not None]
    best = max(measured, key=lambda p: p.images_per_s or 0.0, default=None)
    return {
        "points": [asdict(point) for point in points],
        "best": asdict(best) if best is not None else None,
        # What the service does with DIPR_PINNED_BUFFERS on (its default).
        "pinned_memory": pinned.name if pinned is not None else None,
        "pinned_note": no_pinned,
        "pinned_crash": crash,  # then the service stage runs with DIPR_PINNED_BUFFERS=false
        "cuda_graph_note": (
            "dry run: a fixed-batch CPU session per batch size, no graph" if plan.dry_run else ""
        ),
    }


# --- stage 4: JPEG decoding on the CPU and on the GPU ---------------------------------------------


def check_decode(
    plan: Plan, photo: Path, input_size: tuple[int, int], deadline: Deadline
) -> dict[str, Any]:
    """OpenCV against nvImageCodec (`DIPR_JPEG_DECODER=nvimgcodec`): `benchmarks/jpeg_decoders.py`.
    The dry run decodes with nvImageCodec's CPU decoder instead of the GPU's."""
    from dipr.benchmarks.jpeg_decoders import compare
    from dipr.core.nvimgcodec_jpeg import NvimgcodecJpegDecoder

    jpeg_decoder = NvimgcodecJpegDecoder("cpu" if plan.dry_run else "gpu", 0)
    return compare(photo, jpeg_decoder, input_size, deadline)


# --- stage 5: the service against ONNX Runtime alone --------------------------------------------


@dataclass(frozen=True)
class ServiceLayout:
    """One way `dipr serve` runs: its name, its environment, and what set its process count."""

    name: str
    env: dict[str, str]
    note: str = ""


def settings_of(env: dict[str, str]) -> Settings:
    """The service's settings for `env` (DIPR_* variables), as `dipr serve` would read them."""
    from dipr.service.settings import Settings

    fields = {k.removeprefix("DIPR_").lower(): v for k, v in env.items() if k.startswith("DIPR_")}
    return Settings(**fields)


def frontend_shared_memory(env: dict[str, str], processes: int, size: tuple[int, int]) -> int:
    """Bytes of /dev/shm the crop slabs of `processes` front-ends take (model input `size`,
    width × height; the detector's too unless DIPR_DETECT is false, taken as the same size)."""
    from dipr.service.crop_slab import CropSlab
    from dipr.service.inference_process import slab_slots

    width, height = size
    slots = slab_slots(settings_of(env | {"DIPR_FRONTEND_PROCESSES": str(processes)}))
    return processes * sum(CropSlab.size(count, (height, width, 3)) for count in slots.values())


def service_env(plan: Plan, model: Path) -> dict[str, str]:
    """The service's environment in this stage, whatever the layout: the plan's settings, the
    pose model alone (requests send boxes or take the whole photo), no drain delay."""
    return {
        "DIPR_MODEL_PATH": str(model),
        "DIPR_DETECT": "false",
        "DIPR_LOG_FORMAT": "json",
        "DIPR_DRAIN_DELAY_S": "0",
        "DIPR_SHUTDOWN_GRACE_S": "5",
        **plan.service_env,
    }


def service_layouts(plan: Plan, env: dict[str, str], size: tuple[int, int]) -> list[ServiceLayout]:
    """The layouts the stage measures, the recommended one first: front-end processes (one per
    usable core, at most `plan.frontend_cap`, and no more than /dev/shm holds the crops of)
    feeding one inference process; then the one-process layout."""
    from dipr.service.crop_slab import shared_memory_free
    from dipr.service.runtime import usable_cores

    cores = usable_cores()
    processes = min(cores, plan.frontend_cap)
    note = f"{cores} usable cores"
    if cores > processes:
        note += f", capped at {plan.frontend_cap}"
    free = shared_memory_free()
    if free is not None and frontend_shared_memory(env, processes, size) > free:
        while processes > 1 and frontend_shared_memory(env, processes, size) > free:
            processes -= 1
        note += f"; {processes} fit the {free >> 20} MiB free in /dev/shm"
    return [
        ServiceLayout(FRONT_ENDS, env | {"DIPR_FRONTEND_PROCESSES": str(processes)}, note),
        ServiceLayout(ONE_PROCESS, env | {"DIPR_FRONTEND_PROCESSES": "0"}),
    ]


def load_layout(
    plan: Plan, layout: ServiceLayout, photo: Path, work: Path, deadline: Deadline
) -> list[dict[str, Any]]:
    """`dipr serve` in `layout` under each of the plan's loads, within `deadline`."""
    import cv2

    from dipr.benchmarks.load import LoadSamples, multipart_body, run_hey
    from dipr.benchmarks.servers import ServerProcess, free_port

    data = photo.read_bytes()
    height, width = cv2.imread(str(photo)).shape[:2]
    port = free_port()
    command = [sys.executable, "-m", "dipr.cli", "serve", "--port", str(port)]
    loads = []
    with ServerProcess([*command, "--log-level", "warning"], port, layout.env) as server:
        server.wait_ready("/health/ready", max(1.0, deadline.left() - 5))
        url = f"{server.url}/pose?detect=false"
        for concurrency, boxes in plan.loads:
            seconds = min(plan.seconds_per_load, deadline.left() / 2)
            if seconds < 0.5:
                loads.append({"concurrency": concurrency, "boxes": boxes, "status": "skipped"})
                loads[-1]["reason"] = "stage budget spent"
                continue
            strips = [
                [width * i / boxes, 0.0, width * (i + 1) / boxes, float(height)]
                for i in range(boxes)
            ]
            body, content_type = multipart_body(
                photo.name, data, json.dumps([strips]) if boxes else None, work
            )
            hey = (url, body, content_type, concurrency)
            run_hey(*hey, 1.0, LoadSamples(), plan.hey_cpus)  # first requests: not counted
            samples = LoadSamples()
            run_hey(*hey, seconds, samples, plan.hey_cpus)
            body.unlink()
            result = samples.summary("service", concurrency, max(1, boxes))
            loads.append({"status": "ok", "boxes": boxes} | asdict(result))
    return loads


def check_service(
    plan: Plan,
    model: Path,
    photo: Path,
    best_ort: float | None,
    work: Path,
    deadline: Deadline,
    size: tuple[int, int],
    pinned_crash: str = "",
) -> dict[str, Any]:
    """Each layout in turn, each given an equal share of what is left of the stage (the first
    one's unused time goes to the second); the best images/s of all against ONNX Runtime's.
    `pinned_crash`: the sweep's probe for page-locked memory crashed, so the service runs
    without it."""
    if shutil.which("hey") is None:
        return {"status": "skipped", "reason": "needs `hey` (Debian package hey)"}
    env = service_env(plan, model)
    if pinned_crash:
        env["DIPR_PINNED_BUFFERS"] = "false"
    layouts = service_layouts(plan, env, size)
    results: list[dict[str, Any]] = []
    for index, layout in enumerate(layouts):
        share = Deadline(deadline.left() / (len(layouts) - index))
        result: dict[str, Any] = {"layout": layout.name, "env": layout.env, "note": layout.note}
        if share.left() < 5:
            results.append(result | {"status": "skipped", "reason": "stage budget spent"})
            continue
        try:
            loads = load_layout(plan, layout, photo, work, share)
        except Exception as error:  # e.g. not ready in time: the other layout still runs
            results.append(result | {"status": "failed", "reason": first_line(error)})
            continue
        measured = [load["crops_per_s"] for load in loads if load["status"] == "ok"]
        best = max(measured, default=None)
        results.append(
            result
            | {
                "status": "ok" if measured else "skipped",
                "loads": loads,
                "best_images_per_s": best,
                "over_ort_best": best / best_ort if best is not None and best_ort else None,
            }
        )
    measured_layouts = [r for r in results if r.get("best_images_per_s") is not None]
    best_layout = max(measured_layouts, key=lambda r: r["best_images_per_s"], default=None)
    failures = [r for r in results if r["status"] == "failed"]
    status = "failed" if failures else "ok" if measured_layouts else "skipped"
    summary: dict[str, Any] = {
        "status": status,
        "layouts": results,
        "best_layout": best_layout["layout"] if best_layout else None,
        "best_images_per_s": best_layout["best_images_per_s"] if best_layout else None,
        "best_ort_images_per_s": best_ort,
        "over_ort_best": best_layout["over_ort_best"] if best_layout else None,
    }
    if failures:
        summary["reason"] = "; ".join(f"{r['layout']}: {r['reason']}" for r in failures)
    return summary


# --- the run and its report -----------------------------------------------------------------------


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:400]


def run_stage(
    report: dict[str, Any],
    name: str,
    budget: Deadline,
    action: Callable[[Deadline], dict[str, Any]],
) -> dict[str, Any]:
    """One stage under its deadline: its result, or why it failed, in the report either way."""
    started = time.monotonic()
    print(f"gpu-check: {name} (up to {budget.left():.0f} s)", flush=True)
    try:
        result = {"status": "ok"} | action(budget)
    except Exception as error:
        result = {"status": "failed", "reason": first_line(error)}
    result["seconds"] = round(time.monotonic() - started, 1)
    report["stages"][name] = result
    return result


def machine(plan: Plan) -> str:
    described = f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
    smi = shutil.which("nvidia-smi")
    if not plan.dry_run and smi:
        query = [smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        listed = subprocess.run(query, capture_output=True, text=True, check=False, timeout=10)
        described += f"; GPU: {listed.stdout.strip().splitlines()[0] if listed.stdout else '?'}"
    return described


def run_check(plan: Plan, model: Path, minutes: float, args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime as ort

    from dipr.benchmarks.limit import model_input
    from dipr.service.backend import OnnxBackend

    overall = Deadline(minutes * 60)
    scale = minutes / DEFAULT_MINUTES

    def stage_deadline(name: str) -> Deadline:
        return Deadline(min(STAGE_BUDGETS_S[name] * scale, overall.left()))

    photos = sorted(PHOTOS.glob("*.jpg"))
    size = OnnxBackend(model, "cpu").info.input_size
    crops = np.stack([model_input(photo.read_bytes(), size) for photo in photos])
    report: dict[str, Any] = {
        "kind": "dipr gpu-check",
        "dry_run": plan.dry_run,
        "note": DRY_RUN_NOTE if plan.dry_run else "",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(plan),
        "onnxruntime": ort.__version__,
        "provider": plan.provider,
        "model": str(model),
        "photos": [photo.name for photo in photos],
        "budget_s": minutes * 60,
        "stages": {},
    }
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        run_stage(
            report,
            "placement",
            stage_deadline("placement"),
            lambda _: check_placement(plan, model, crops, work),
        )

        def parity(deadline: Deadline) -> dict[str, Any]:
            half, why = fp16_model(args.fp16_model, args.no_fp16, model, work, deadline)
            return check_parity(plan, model, half, why, crops)

        run_stage(report, "parity", stage_deadline("parity"), parity)
        sweep = run_stage(
            report,
            "sweep",
            stage_deadline("sweep"),
            lambda deadline: check_sweep(plan, model, crops, deadline),
        )
        run_stage(
            report,
            "decode",
            stage_deadline("decode"),
            lambda deadline: check_decode(plan, photos[0], size, deadline),
        )
        best_ort = (sweep.get("best") or {}).get("images_per_s")
        pinned_crash = str(sweep.get("pinned_crash") or "")
        run_stage(
            report,
            "service",
            stage_deadline("service"),
            lambda deadline: check_service(
                plan, model, photos[0], best_ort, work, deadline, size, pinned_crash
            ),
        )
    report["elapsed_s"] = round(minutes * 60 - overall.left(), 1)
    report["goals"] = goals(report)
    return report


def goals(report: dict[str, Any]) -> dict[str, Any]:
    parity = report["stages"].get("parity", {})
    service = report["stages"].get("service", {})
    fp16 = parity.get("fp16_max_px")
    ratio = service.get("over_ort_best")
    return {
        "fp16_within_px": {
            "goal": FP16_GOAL_PX,
            "value": fp16,
            "met": None if fp16 is None else fp16 <= FP16_GOAL_PX,
        },
        "service_over_ort_best": {
            "goal": SERVICE_GOAL,
            "value": ratio,
            "met": None if ratio is None else ratio >= SERVICE_GOAL,
        },
    }


def number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def pixels(value: float | None) -> str:
    """A distance in pixels, readable from 1e-6 (CPU against CPU) to whole pixels."""
    if value is None:
        return "—"
    return f"{value:.4f}" if value == 0 or value >= 1e-3 else f"{value:.1e}"


def verdict(goal: dict[str, Any]) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[goal["met"]]


def markdown(report: dict[str, Any]) -> str:
    stages = report["stages"]
    lines = [f"## GPU check {report['date']}: {report['machine']}", ""]
    if report["dry_run"]:
        lines += [f"> **{DRY_RUN_NOTE}**: every stage ran on the CPU at tiny batch sizes.", ""]
    lines += [
        f"ONNX Runtime {report['onnxruntime']}, provider `{report['provider']}`, model "
        f"`{Path(report['model']).name}`, photos {', '.join(report['photos'])}; "
        f"{report['elapsed_s']} s of a {report['budget_s']:.0f} s budget.",
        "",
        "| stage | status | seconds | result |",
        "|---|---|---:|---|",
    ]
    for name in STAGE_BUDGETS_S:
        stage = stages.get(name, {"status": "not run"})
        lines.append(
            f"| {name} | {stage['status']} | {stage.get('seconds', '')} | "
            f"{stage_result(name, stage, report['goals'])} |"
        )
    lines += placement_table(stages.get("placement", {}))
    lines += parity_table(stages.get("parity", {}))
    lines += sweep_table(stages.get("sweep", {}))
    lines += decode_table(stages.get("decode", {}))
    lines += service_table(stages.get("service", {}))
    return "\n".join(lines) + "\n"


def stage_result(name: str, stage: dict[str, Any], goal: dict[str, Any]) -> str:
    if stage["status"] != "ok":
        return str(stage.get("reason", ""))
    if name == "placement":
        dynamic, fixed = stage["dynamic_batch"], stage["fixed_batch"]
        return (
            f"{dynamic['nodes']} nodes, {len(dynamic['not_on_target'])} not on "
            f"{stage['target']} ({dynamic['copies']} copies); fixed batch: "
            f"{len(fixed['not_on_target'])} not on {stage['target']}"
        )
    if name == "parity":
        fp16 = goal["fp16_within_px"]
        return f"fp16 against fp32: {pixels(fp16['value'])} px (≤ {FP16_GOAL_PX}: {verdict(fp16)})"
    if name == "sweep":
        best = stage.get("best")
        if not best:
            return "no point measured"
        return (
            f"best {number(best['images_per_s'])} images/s "
            f"({MODE_TITLES[best['mode']]}, batch {best['batch_size']})"
        )
    if name == "decode":
        return decode_summary(stage)
    ratio = goal["service_over_ort_best"]
    return (
        f"best {number(stage['best_images_per_s'])} images/s ({stage['best_layout']}) = "
        f"{number(ratio['value'], 2)}× ORT alone (≥ {SERVICE_GOAL}: {verdict(ratio)})"
    )


def placement_table(stage: dict[str, Any]) -> list[str]:
    if stage.get("status") != "ok":
        return []
    lines = [
        "",
        f"Nodes not on {stage['target']} (session providers: "
        f"{', '.join(stage['session_providers'])}):",
        "",
        "| session | nodes | by provider | not on target, by op |",
        "|---|---:|---|---|",
    ]
    for title, key in (("dynamic batch (served)", "dynamic_batch"), ("fixed batch", "fixed_batch")):
        summary = stage[key]
        by_provider = ", ".join(f"{p}: {n}" for p, n in summary["by_provider"].items())
        by_op = ", ".join(f"{op} ×{n}" for op, n in summary["not_on_target_by_op"].items())
        lines.append(f"| {title} | {summary['nodes']} | {by_provider} | {by_op or 'none'} |")
    return lines


def parity_table(stage: dict[str, Any]) -> list[str]:
    if stage.get("status") != "ok":
        return []
    lines = [
        "",
        f"Keypoints on {stage['photos']} photos (whole-photo crops):",
        "",
        "| model | compared | max px | mean px | joints > 0.5 px | max score diff | status |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in stage["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['model']} | {row['compared']} | | | | | {row['reason']} |")
            continue
        lines.append(
            f"| {row['model']} | {row['compared']} | {pixels(row['max_px'])} | "
            f"{pixels(row['mean_px'])} "
            f"| {row['joints_over_goal']} of {row['joints']} | "
            f"{row['max_score_difference']:.5f} | ok |"
        )
    return lines


def sweep_table(stage: dict[str, Any]) -> list[str]:
    if stage.get("status") != "ok":
        return []
    points = {(p["batch_size"], p["mode"]): p for p in stage["points"]}
    sizes = sorted({p["batch_size"] for p in stage["points"]})
    lines = [
        "",
        "ONNX Runtime alone, images/s (p50 ms per batch):",
        "",
        "| batch | " + " | ".join(MODE_TITLES[mode] for mode in MODES) + " |",
        "|---:|" + "---:|" * len(MODES),
    ]
    for size in sizes:
        cells = []
        for mode in MODES:
            point = points.get((size, mode))
            if point is None or point["status"] != "ok":
                cells.append(point["status"] if point else "")
            else:
                cells.append(f"{number(point['images_per_s'])} ({number(point['p50_ms'], 2)})")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    failures = {p["reason"] for p in stage["points"] if p["status"] == "failed"}
    lines += [f"\nFailed: {reason}" for reason in sorted(failures)]
    if stage.get("pinned_note"):
        lines.append(f"\nPage-locked staging: {stage['pinned_note']}.")
    elif stage.get("pinned_memory"):
        lines.append(f"\nPage-locked staging: ONNX Runtime's {stage['pinned_memory']} memory.")
    if stage.get("cuda_graph_note"):
        lines.append(f"\nCUDA graph column: {stage['cuda_graph_note']}.")
    return lines


def service_table(stage: dict[str, Any]) -> list[str]:
    """One table per layout measured (a failed or skipped one: a line saying why)."""
    lines: list[str] = []
    for layout in stage.get("layouts", []):
        lines += layout_table(layout, stage["best_ort_images_per_s"])
    return lines


def layout_table(layout: dict[str, Any], best_ort: float | None) -> list[str]:
    env = layout["env"]
    settings = ", ".join(f"{k}={v}" for k, v in env.items() if k != "DIPR_MODEL_PATH")
    note = f"; {layout['note']}" if layout.get("note") else ""
    title = f"`dipr serve`, {layout['layout']} ({settings}{note})"
    if layout["status"] != "ok":
        return ["", f"{title}: {layout['status']}, {layout.get('reason', '')}"]
    lines = [
        "",
        f"{title} under `hey`:",
        "",
        "| load | requests/s | images/s | p50 ms | p99 ms | errors | × ORT alone's best |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for load in layout["loads"]:
        what = f"c={load['concurrency']}, " + (
            f"{load['boxes']} boxes" if load["boxes"] else "whole photo"
        )
        if load["status"] != "ok":
            lines.append(f"| {what} | | | | | | {load.get('reason', '')} |")
            continue
        ratio = load["crops_per_s"] / best_ort if best_ort else None
        lines.append(
            f"| {what} | {number(load['requests_per_s'])} | {number(load['crops_per_s'])} | "
            f"{number(load['p50_ms'])} | {number(load['p99_ms'])} | {load['errors']} | "
            f"{number(ratio, 2)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dipr.benchmarks.gpu_check",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--model", type=Path, default=DEFAULT_ONNX)
    parser.add_argument(
        "--minutes", type=float, default=DEFAULT_MINUTES, help="the whole run's budget"
    )
    parser.add_argument(
        "--fp16-model", type=Path, help="the fp16 export to compare (default: exported now)"
    )
    parser.add_argument("--no-fp16", action="store_true", help="no fp16 rows")
    parser.add_argument(
        "--provider",
        choices=["cuda", "cpu"],
        default="cuda",
        help="cpu: a dry run of every stage on the CPU at tiny batch sizes (for tests; the "
        "report says it holds no GPU figures)",
    )
    args = parser.parse_args(argv)
    plan = DRY_PLAN if args.provider == "cpu" else GPU_PLAN
    if not plan.dry_run:
        problem = gpu_problem()
        if problem is not None:
            print(problem, file=sys.stderr)
            return 2
        from dipr.service.backend import OnnxBackend, ProviderUnavailable

        try:  # onnxruntime-gpu that cannot use this GPU (CUDA or cuDNN libraries missing)
            OnnxBackend(args.model, "cuda")
        except ProviderUnavailable as error:
            print(f"gpu-check: {first_line(error)}", file=sys.stderr)
            return 2
    report = run_check(plan, args.model, args.minutes, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "gpu-check.md").write_text(table)
    print(table)
    print(f"wrote {args.out}/gpu-check.json, {args.out}/gpu-check.md")
    failed = [name for name, stage in report["stages"].items() if stage["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
