"""`make gpu-check` (benchmarks/gpu_check.py) where there is no GPU: its refusal, a dry run of
every stage on the CPU, the keypoint comparison, where nodes ran from a real ONNX Runtime
profile; and the GPU image's runtime pins (ONNX Runtime's release, TensorRT 10)."""

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from packaging.requirements import Requirement

from dipr.benchmarks import gpu_check
from dipr.models.registry import DEFAULT_ONNX
from dipr.service.backend import session_options
from dipr.service.preflight import gpu_visible

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
NO_GPU = "CUDAExecutionProvider" not in ort.get_available_providers() or not gpu_visible()
HAS_TORCH = importlib.util.find_spec("torch") is not None


# --- the refusal ----------------------------------------------------------------------------------


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU that ONNX Runtime can use")
def test_without_a_gpu_it_refuses_at_once_saying_what_it_needs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dipr.benchmarks.gpu_check", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("gpu-check: ")
    assert "no NVIDIA GPU" in line or "no CUDA provider" in line
    assert "onnxruntime-gpu" in line and "ORT=gpu" in line
    assert result.stdout == ""
    assert not out.exists()  # nothing written
    assert elapsed < 5, elapsed  # a second or two here; slack for a loaded machine


# --- the dry run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, str]:
    out = tmp_path_factory.mktemp("gpu-check")
    command = [sys.executable, "-m", "dipr.benchmarks.gpu_check", "--provider", "cpu"]
    result = subprocess.run(
        [*command, "--out", str(out), "--minutes", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    return result.returncode, report, (out / "gpu-check.md").read_text()


def test_a_dry_run_runs_every_stage_and_says_it_holds_no_gpu_figures(dry_run) -> None:
    _, report, table = dry_run
    assert report["dry_run"] is True and report["note"] == "CPU dry run, not GPU figures"
    assert report["provider"] == "cpu"
    assert list(report["stages"]) == ["placement", "parity", "sweep", "decode", "service"]
    assert all(stage["status"] == "ok" for stage in report["stages"].values()), report["stages"]
    assert report["elapsed_s"] < report["budget_s"] == 240
    assert "**CPU dry run, not GPU figures**" in table
    for stage in ("placement", "parity", "sweep", "decode", "service"):
        assert re.search(rf"^\| {stage} \| ok \| [\d.]+ \| .+ \|$", table, re.M), stage


def test_the_dry_run_places_every_node_and_compares_keypoints(dry_run) -> None:
    _, report, table = dry_run
    placement = report["stages"]["placement"]
    assert placement["target"] == "CPUExecutionProvider"
    for session in ("dynamic_batch", "fixed_batch"):
        assert placement[session]["nodes"] > 100
        assert placement[session]["not_on_target"] == []
    # The batch fixed, ONNX Runtime folds the shape arithmetic away: fewer nodes.
    assert placement["fixed_batch"]["nodes"] < placement["dynamic_batch"]["nodes"]
    rows = report["stages"]["parity"]["rows"]
    assert [row["model"] for row in rows] == ["fp32", "fp16", "fp16"]
    assert rows[0]["status"] == "ok" and rows[0]["max_px"] == 0.0  # the same CPU, twice
    assert rows[0]["joints"] == 3 * 17  # the three fixture photos
    if HAS_TORCH:  # exported by the check itself
        assert rows[2]["status"] == "ok" and rows[2]["max_px"] < gpu_check.FP16_GOAL_PX
        assert report["goals"]["fp16_within_px"]["met"] is True
    else:
        assert rows[2]["status"] == "skipped" and "torch" in rows[2]["reason"]
    assert "| fp32 | cpu against cpu |" in table


def test_the_dry_run_sweeps_four_ways_of_running_and_loads_the_service(dry_run) -> None:
    _, report, table = dry_run
    points = report["stages"]["sweep"]["points"]
    assert {(p["mode"], p["batch_size"]) for p in points} == {
        (mode, size) for mode in gpu_check.MODES for size in (1, 2)
    }
    assert all(p["status"] == "ok" and p["images_per_s"] > 0 for p in points), points
    assert (
        "| batch | session.run | IOBinding, device-resident | IOBinding + page-locked staging "
        "| CUDA graph (+ page-locked staging) |" in table
    )
    assert "a CPU allocator's memory stands in for page-locked memory" in table
    assert re.search(r"^\| 2 \| [\d,.]+ \([\d.]+\) \| [\d,.]+ \(", table, re.M)
    service = report["stages"]["service"]
    best = report["stages"]["sweep"]["best"]["images_per_s"]
    assert service["over_ort_best"] == pytest.approx(service["best_images_per_s"] / best)
    assert report["goals"]["service_over_ort_best"]["value"] == service["over_ort_best"]


def test_the_dry_run_serves_in_the_front_end_layout_then_in_one_process(dry_run) -> None:
    _, report, table = dry_run
    service = report["stages"]["service"]
    front_ends, one_process = service["layouts"]
    assert front_ends["layout"] == gpu_check.FRONT_ENDS and one_process["layout"] == "one process"
    # The front-end layout as recommended for a GPU: one front-end per core, capped (2 in a dry
    # run); the other is today's one-process layout.
    cores = len(os.sched_getaffinity(0))
    assert front_ends["env"]["DIPR_FRONTEND_PROCESSES"] == str(min(cores, 2))
    assert one_process["env"]["DIPR_FRONTEND_PROCESSES"] == "0"
    for layout in (front_ends, one_process):
        assert layout["status"] == "ok", layout
        assert layout["env"]["DIPR_PROVIDER"] == "cpu"
        assert all(load["errors"] == 0 and load["requests"] > 0 for load in layout["loads"])
        assert len(layout["loads"]) == len(gpu_check.DRY_PLAN.loads)
    best = max(front_ends, one_process, key=lambda layout: layout["best_images_per_s"])
    assert service["best_layout"] == best["layout"]
    assert service["best_images_per_s"] == best["best_images_per_s"]
    assert "`dipr serve`, front-end processes (" in table and "`dipr serve`, one process (" in table


def test_the_gpu_plan_recommends_a_front_end_per_core_within_shared_memory() -> None:
    plan = gpu_check.GPU_PLAN
    env = gpu_check.service_env(plan, DEFAULT_ONNX)
    size = (256, 256)  # the default model's input
    layouts = gpu_check.service_layouts(plan, env, size)
    assert [layout.name for layout in layouts] == [gpu_check.FRONT_ENDS, "one process"]
    processes = int(layouts[0].env["DIPR_FRONTEND_PROCESSES"])
    assert (
        1
        <= processes
        <= min(len(os.sched_getaffinity(0)), plan.frontend_cap)
        == min(len(os.sched_getaffinity(0)), 16)
    )
    free = shutil.disk_usage("/dev/shm").free
    assert processes == 1 or gpu_check.frontend_shared_memory(env, processes, size) <= free
    # The service's own rule (inference_process.slab_slots): each front-end gets its share of
    # DIPR_MAX_QUEUE, at least DIPR_MAX_BOXES crops; with the plan's queue of 1024 and no
    # detector, 192 MiB for up to 16 front-ends.
    for count in (1, 16):
        assert gpu_check.frontend_shared_memory(env, count, size) == 1024 * 256 * 256 * 3


# --- the parts ------------------------------------------------------------------------------------


def test_keypoint_difference_is_the_distance_each_joint_moved() -> None:
    reference = {"keypoints": np.zeros((2, 17, 2), np.float32), "scores": np.zeros((2, 17))}
    other = {"keypoints": reference["keypoints"].copy(), "scores": reference["scores"].copy()}
    other["keypoints"][0, 3] = [3.0, 4.0]  # 5 px
    other["keypoints"][1, 16] = [0.0, 0.25]  # within the 0.5 px goal
    other["scores"][1, 2] = 0.125
    difference = gpu_check.keypoint_difference(reference, other)
    assert difference.joints == 34
    assert difference.max_px == pytest.approx(5.0)
    assert difference.mean_px == pytest.approx(5.25 / 34)
    assert difference.joints_over_goal == 1
    assert difference.max_score_difference == pytest.approx(0.125)


def test_node_placement_is_read_from_a_real_onnx_runtime_profile(tmp_path: Path) -> None:
    def session(options: ort.SessionOptions) -> ort.InferenceSession:
        return ort.InferenceSession(str(DEFAULT_ONNX), options, providers=["CPUExecutionProvider"])

    batch = np.zeros((2, 256, 256, 3), np.uint8)
    providers, placements = gpu_check.profiled_placements(
        session, session_options(0), batch, tmp_path
    )
    assert providers == ["CPUExecutionProvider"]
    assert not list(tmp_path.iterdir())  # the profile is read, then removed
    assert len({p.name for p in placements}) == len(placements) > 100  # each node once
    assert {p.provider for p in placements} == {"CPUExecutionProvider"}
    assert {"Conv", "Sigmoid", "ReduceSum"} <= {p.op for p in placements}
    # Against CUDA, every node is elsewhere; against the CPU, none.
    assert gpu_check.nodes_not_on(placements, "CUDAExecutionProvider") == placements
    assert gpu_check.nodes_not_on(placements, "CPUExecutionProvider") == []
    summary = gpu_check.placement_summary(placements, "CUDAExecutionProvider")
    assert summary["not_on_target_by_op"]["Conv"] > 50 and summary["copies"] == 0


def test_only_kernel_events_with_a_provider_count_as_placements() -> None:
    events = [
        {"cat": "Session", "name": "model_run", "args": {}},
        {"cat": "Node", "name": "conv_1_fence_before", "args": {"op_name": "Conv"}},
        {
            "cat": "Node",
            "name": "conv_1_kernel_time",
            "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"},
        },
        {  # the same node in a second run
            "cat": "Node",
            "name": "conv_1_kernel_time",
            "args": {"op_name": "Conv", "provider": "CUDAExecutionProvider"},
        },
        {
            "cat": "Node",
            "name": "shape_2_kernel_time",
            "args": {"op_name": "Shape", "provider": "CPUExecutionProvider"},
        },
    ]
    placements = gpu_check.node_placements(events)
    assert placements == [
        gpu_check.NodePlacement("conv_1", "Conv", "CUDAExecutionProvider"),
        gpu_check.NodePlacement("shape_2", "Shape", "CPUExecutionProvider"),
    ]
    assert gpu_check.nodes_not_on(placements, "CUDAExecutionProvider") == placements[1:]


# --- the runtime pins of the GPU image ------------------------------------------------------------


def pinned(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("==") for line in lines)


def test_the_cpu_runtime_the_tests_use_is_the_gpu_images_release() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert len(extras["cpu"]) == len(extras["gpu"]) == 1
    cpu, gpu = Requirement(extras["cpu"][0]), Requirement(extras["gpu"][0])
    (cpu_pin,), (gpu_pin,) = cpu.specifier, gpu.specifier
    assert cpu_pin.operator == gpu_pin.operator == "=="
    assert cpu_pin.version == gpu_pin.version  # one release: CI tests what the GPU image runs
    assert pinned(DOCKER / "requirements-gpu.txt")["onnxruntime-gpu"] == gpu_pin.version
    assert pinned(DOCKER / "requirements-cpu.txt")["onnxruntime"] == cpu_pin.version
    installed = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(PackageNotFoundError):
            installed.append(version(name))
    # This environment's (make test reinstalls it when pyproject's extras change).
    assert installed == [cpu_pin.version], installed


def lock_module():
    spec = importlib.util.spec_from_file_location("docker_lock", DOCKER / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_image_gets_tensorrt_10_built_for_its_cuda() -> None:
    """onnxruntime-gpu 1.31's TensorRT provider links libnvinfer.so.10: TensorRT 11 (what
    `pip install tensorrt` brings now) cannot be loaded by it."""
    path = DOCKER / "requirements-gpu-tensorrt.txt"
    ((name, release),) = pinned(path).items()
    cuda = re.fullmatch(r"tensorrt-cu(\d+)-libs", name)
    assert cuda is not None, name
    assert release.split(".")[0] == "10"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", dockerfile, re.M)
    assert cuda.group(1) == base  # the CUDA major of the base image (and of onnxruntime-gpu)
    # Generated: docker/lock.py writes exactly this file.
    assert path.read_text().splitlines() == lock_module().tensorrt_lines()
    # Installed in the GPU base only, from NVIDIA's index (PyPI's are stubs), outside the venv,
    # onto the loader's path, checked for the libraries the provider links.
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)
    (gpu_base,) = [stage for stage in stages if stage.startswith("${CUDA_IMAGE} AS base-gpu")]
    code = re.sub(r"#.*", "", gpu_base)
    assert "requirements-gpu-tensorrt.txt" in code and "--no-deps" in code
    assert "--index-url https://pypi.nvidia.com" in code and "--target /opt/tensorrt" in code
    assert "libnvonnxparser.so.10" in code and "ldconfig" in code
    assert "requirements-gpu-tensorrt.txt" not in "".join(s for s in stages if s is not gpu_base)
    # The serving closure stays TensorRT-free (and never the `tensorrt` meta package).
    assert not [p for p in pinned(DOCKER / "requirements-gpu.txt") if p.startswith("tensorrt")]


def test_the_dry_run_compares_jpeg_decoders_as_the_service_runs_them(dry_run) -> None:
    _, report, table = dry_run
    decode = report["stages"]["decode"]
    figures = {(f["size"], f["decoder"], f["threads"]): f for f in decode["figures"]}
    served, full, nvimgcodec = (
        "OpenCV, reduced (as served)",
        "OpenCV, full scale",
        (
            "nvImageCodec (the CPU)"  # the dry run's stand-in for the GPU
        ),
    )
    for threads in (1, decode["threads"]):
        # A 12 MP photo for one 256×256 crop: OpenCV decodes 1/8 of it, nvImageCodec all of it.
        assert figures[("4032x3024", served, threads)]["reduction"] == 8
        assert figures[("4032x3024", full, threads)]["reduction"] == 1
        assert figures[("4032x3024", nvimgcodec, threads)]["reduction"] == 1
    assert all(f["cpu_ms"] > 0 and f["images_per_s"] > 0 for f in figures.values())
    assert "| 4032x3024 | nvImageCodec (the CPU) | 1 | 1/1 |" in table
    assert re.search(r"^\| decode \| ok \| [\d.]+ \| 4032x3024, \d threads: OpenCV", table, re.M)
