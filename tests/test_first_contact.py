"""First contact (issue #13): set-up that does its own work, and starts that fail fast.

`make test` on a fresh machine is the test of the set-up itself; here are the parts that can be
shown without one: the Makefile's choices (run with stub commands on PATH, `make -n` for the
installs), the start-up refusals of `dipr serve` as real processes (one line, no traceback, before
the model loads), `dipr export` without its extra, `dipr eval` without data, and a warning-free
editable build.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from importlib.metadata import distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dipr.service.preflight import gpu_visible

ROOT = Path(__file__).resolve().parents[1]
MAKE = [shutil.which("make") or "make", "--no-print-directory", "-f", str(ROOT / "Makefile")]
# Comfortably above an import of the CLI (1-2 s), well below a model load and warm-up.
FAST_S = 20


def clean_environment(**variables: str) -> dict[str, str]:
    """This process's environment without DIPR_* settings, plus `variables`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("DIPR_")}
    return {**kept, **variables}


def dipr(
    *argv: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dipr.cli", *argv],
        env=env or clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    return result, time.monotonic() - start


def assert_one_line_refusal(result: subprocess.CompletedProcess[str], seconds: float) -> str:
    """The refusal: a non-zero exit, in time, with one line on stderr and no traceback."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert seconds < FAST_S, seconds
    return lines[0]


# --- dipr serve: refused before anything loads --------------------------------------------------


def test_a_bad_setting_is_one_line_naming_its_variable():
    result, seconds = dipr("serve", env=clean_environment(DIPR_MAX_IMAGES="0"))
    line = assert_one_line_refusal(result, seconds)
    assert result.returncode == 2
    assert (
        line == "dipr serve: DIPR_MAX_IMAGES: Input should be greater than or equal to 1 (got '0')"
    )


def test_a_bad_flag_value_names_the_flag():
    result, seconds = dipr("serve", "--port", "70000")
    line = assert_one_line_refusal(result, seconds)
    assert line.startswith("dipr serve: --port (DIPR_PORT): Input should be less than or equal")


def test_a_queue_smaller_than_a_request_names_the_variables_involved():
    result, seconds = dipr("serve", env=clean_environment(DIPR_MAX_QUEUE="4"))
    line = assert_one_line_refusal(result, seconds)
    for name in ("DIPR_MAX_BOXES", "DIPR_MAX_IMAGES", "DIPR_MAX_QUEUE"):
        assert name in line, line


@pytest.mark.parametrize("variable", ["DIPR_MODEL_PATH", "DIPR_DETECTOR_PATH"])
def test_a_missing_model_file_fails_at_once_naming_variable_and_path(variable, tmp_path):
    missing = tmp_path / "missing.onnx"
    # --log-level info: the model load would log a line, so one line shows nothing loaded.
    result, seconds = dipr(
        "serve", "--log-level", "info", env=clean_environment(**{variable: str(missing)})
    )
    line = assert_one_line_refusal(result, seconds)
    assert result.returncode == 2
    assert line == f"dipr serve: {variable}: cannot read {missing}: No such file or directory"


def test_a_missing_model_given_by_flag_names_the_flag(tmp_path):
    result, seconds = dipr("serve", "--model", str(tmp_path / "nope.onnx"))
    line = assert_one_line_refusal(result, seconds)
    assert line.startswith("dipr serve: --model (DIPR_MODEL_PATH): cannot read ")


@pytest.mark.skipif(gpu_visible(), reason="this machine has a GPU: nvJPEG may well decode")
def test_the_gpu_jpeg_decoder_without_a_gpu_fails_at_once_naming_its_variable():
    # --log-level info, as above; the refusal does not import nvImageCodec (whose import prints
    # lines of its own), it only looks for the GPU.
    result, seconds = dipr(
        "serve", "--log-level", "info", env=clean_environment(DIPR_JPEG_DECODER="nvimgcodec")
    )
    line = assert_one_line_refusal(result, seconds)
    assert result.returncode == 2
    assert line.startswith(
        "dipr serve: DIPR_JPEG_DECODER=nvimgcodec decodes JPEGs on an NVIDIA GPU and none is "
        "visible here"
    )


@pytest.fixture
def taken_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_taken_port_fails_before_the_model_loads(taken_port: int):
    result, seconds = dipr(
        "serve", "--log-level", "info", env=clean_environment(DIPR_PORT=str(taken_port))
    )
    line = assert_one_line_refusal(result, seconds)
    assert line == (
        f"dipr serve: 127.0.0.1:{taken_port} is already in use: choose another port with "
        "DIPR_PORT or --port"
    )
    result, seconds = dipr("serve", "--port", str(taken_port))
    line = assert_one_line_refusal(result, seconds)
    assert f"127.0.0.1:{taken_port} is already in use" in line and "--port" in line


def test_a_taken_metrics_port_is_named(taken_port: int):
    result, seconds = dipr("serve", env=clean_environment(DIPR_METRICS_PORT=str(taken_port)))
    line = assert_one_line_refusal(result, seconds)
    assert f":{taken_port} is already in use" in line and "DIPR_METRICS_PORT" in line


def stub(folder: Path, name: str, script: str) -> None:
    tool = folder / name
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


def test_a_gpu_without_a_cuda_onnx_runtime_is_one_warning_line(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA: nothing to warn about")
    stub(tmp_path, "nvidia-smi", "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    path = f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    # A missing model ends the start right after the warning: no model load needed.
    env = clean_environment(PATH=path, DIPR_MODEL_PATH=str(tmp_path / "missing.onnx"))
    result, _ = dipr("serve", env=env)
    warning, refusal = result.stderr.strip().splitlines()
    assert '"level": "warning"' in warning and "no CUDA provider" in warning
    assert refusal.startswith("dipr serve: DIPR_MODEL_PATH: cannot read")
    if not gpu_visible():  # without the stub: no GPU here, no warning
        result, _ = dipr("serve", env=clean_environment(DIPR_MODEL_PATH=env["DIPR_MODEL_PATH"]))
        assert "no CUDA provider" not in result.stderr


# --- dipr export and dipr eval: what to install, what data -------------------------------------

# Imports of onnx fail as they do where it is not installed: a finder ahead of the others that
# refuses the name (and checks that it does, so that the test cannot pass by accident).
WITHOUT_ONNX = """
import importlib.abc, sys

class NoOnnx(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "onnx" or name.startswith("onnx."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOnnx())
try:
    import onnx
except ModuleNotFoundError:
    pass
else:
    sys.exit("onnx was imported: the block does not work")
from dipr.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_export_without_its_extra_says_which_to_install(tmp_path):
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_ONNX, "export", "--output", str(tmp_path / "m.onnx")],
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    line = assert_one_line_refusal(result, time.monotonic() - start)
    assert line.startswith("dipr export: error: the export extra is not installed (no module onnx)")
    assert "pip install 'dipr[export]'" in line
    assert not (tmp_path / "m.onnx").exists()


def test_eval_without_data_says_what_data_and_how_to_point_at_it(tmp_path):
    result, seconds = dipr("eval", env=clean_environment(DIPR_DEV_DATA=str(tmp_path)))
    line = assert_one_line_refusal(result, seconds)
    assert line.startswith(f"dipr eval: error: no evaluation data: $DIPR_DEV_DATA is {tmp_path}")
    assert "COCO-format" in line and "--data DIR" in line and "--annotations FILE" in line


# --- the Makefile --------------------------------------------------------------------------------


def make(*argv: str, path: str | None = None, cwd: Path = ROOT, **variables: str):
    env = {**os.environ, **variables}
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [*MAKE, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A PATH folder with what the Makefile's shell needs, the test commands all present, and an
    apt-get that records what it was asked; `id` says root."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in ("sh", "tr", "env", "ls", "grep", "true", "cat"):
        (folder / name).symlink_to(shutil.which(name, path="/usr/bin:/bin"))
    for command in ("promtool", "npm", "nginx", "docker-compose", "hey"):
        stub(folder, command, "")
    stub(folder, "apt-get", f'echo "apt-get $*" >> {tmp_path / "apt.log"}\n')
    stub(folder, "id", "echo 0\n")
    return folder


def test_make_test_installs_nothing_and_says_nothing_when_all_is_there(tools: Path):
    result = make("system-packages", path=str(tools))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not (tools.parent / "apt.log").exists()


def test_make_test_installs_the_missing_debian_packages_as_root(tools: Path):
    (tools / "npm").unlink()
    (tools / "hey").unlink()
    result = make("system-packages", path=str(tools))
    assert result.returncode == 0, result.stderr
    assert (tools.parent / "apt.log").read_text().splitlines() == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends nodejs npm hey",
    ]


def test_make_test_uses_a_sudo_that_asks_no_password(tools: Path):
    (tools / "nginx").unlink()
    stub(tools, "id", "echo 1000\n")
    stub(
        tools,
        "sudo",
        f'echo "sudo $*" >> {tools.parent / "sudo.log"}\n[ "$1" = -n ] && shift\nexec "$@"\n',
    )
    result = make("system-packages", path=str(tools))
    assert result.returncode == 0, result.stderr
    assert (
        "apt-get install -y -qq --no-install-recommends nginx"
        in (tools.parent / "apt.log").read_text()
    )
    assert (tools.parent / "sudo.log").read_text().startswith("sudo -n true\nsudo -n env ")


def test_make_test_without_root_prints_the_one_command_and_fails(tools: Path):
    (tools / "promtool").unlink()
    stub(tools, "id", "echo 1000\n")  # and no sudo
    result = make("system-packages", path=str(tools))
    assert result.returncode != 0
    assert (
        "make: needs the Debian packages prometheus; run: sudo sh -c 'apt-get update -qq && "
        "apt-get install -y -qq --no-install-recommends prometheus'"
    ) in result.stderr
    assert not (tools.parent / "apt.log").exists()


def test_make_test_sets_up_the_system_before_the_venv():
    lines = make("-n", "-B", "test").stdout.splitlines()
    first_install = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert any("promtool:prometheus" in line for line in lines[:first_install])


def test_a_python_without_venv_support_gets_its_debian_package(tools: Path, tmp_path: Path):
    stub(
        tools,
        "python3",
        'case "$2" in *ensurepip*) exit 1;; *version_info*) echo python3.11-venv;; '
        '*) echo "python3 $*" >> ' + str(tmp_path / "python.log") + ";; esac\n",
    )
    make(".venv/bin/python", path=str(tools), cwd=tmp_path)  # pip itself then fails: no venv
    assert "--no-install-recommends python3.11-venv" in (tmp_path / "apt.log").read_text()
    assert (tmp_path / "python.log").read_text().startswith("python3 -m venv .venv")


def test_ci_is_the_readmes_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert "exec make test" in script and "apt-get" not in script


def planned_serve(*argv: str, path: str | None = None, **variables: str) -> list[str]:
    """The commands `make serve` would run, from scratch."""
    result = make("-n", "-B", "serve", *argv, path=path, **variables)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_serve_installs_onnxruntime_gpu_where_a_gpu_is_visible(tmp_path: Path):
    stub(tmp_path, "nvidia-smi", "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    with_gpu = planned_serve(path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert any(line.endswith("pip install -q -e '.[gpu]'") for line in with_gpu)
    # The CPU wheel out first, never both.
    assert any("pip uninstall -y -q onnxruntime;" in line for line in with_gpu)
    chosen = planned_serve("ORT=cpu", path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert any(line.endswith("pip install -q -e '.[cpu]'") for line in chosen)
    here = "gpu" if gpu_visible() else "cpu"
    assert any(line.endswith(f"pip install -q -e '.[{here}]'") for line in planned_serve())


def test_make_serve_takes_host_and_port_from_its_command_line_only():
    assert planned_serve("PORT=8080", "HOST=0.0.0.0")[-1].endswith(
        "dipr serve --host 0.0.0.0 --port 8080"
    )
    assert planned_serve(PORT="9999", HOST="somewhere")[-1].endswith("dipr serve")


# --- the install ---------------------------------------------------------------------------------


def test_the_runtime_is_one_of_two_extras_and_never_both():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [Requirement(d).name for d in project["dependencies"]]
    assert not [name for name in names if name.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    cpu, gpu = (Requirement(d) for d in (*extras["cpu"], *extras["gpu"]))
    assert (cpu.name, gpu.name, cpu.specifier) == ("onnxruntime", "onnxruntime-gpu", gpu.specifier)
    runtimes = {"onnxruntime", "onnxruntime-gpu"}
    installed = {d.metadata["Name"].lower() for d in distributions()} & runtimes
    assert len(installed) <= 1, installed


def test_the_environment_passes_pip_check():
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_editable_build_prints_no_warning(tmp_path):
    # setuptools' own backend, as `pip install -e .` calls it (pip would add only its isolation),
    # with every warning shown; a byte-compiling notice depends on the environment, not on us.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = f"import setuptools.build_meta as b; b.build_editable({str(tmp_path)!r})"
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "warn" not in output.lower(), output
