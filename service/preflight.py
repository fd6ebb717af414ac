"""Checks before `dipr serve` loads anything: whatever can be known wrong (a setting, a file, an
address, a GPU that ONNX Runtime cannot use, a GPU JPEG decoder without a GPU) is said in one line
naming what the operator set (`DIPR_MAX_IMAGES`, `--port`), instead of a traceback, a slow failure
after the model loaded, or a replica unready for ever."""

from __future__ import annotations

import errno
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from dipr.extras import missing_extras

if TYPE_CHECKING:
    from pydantic import ValidationError

    from dipr.service.settings import Settings

# Flags of `dipr serve` → the settings' environment variables.
FLAG_VARIABLES = {
    "host": "DIPR_HOST",
    "port": "DIPR_PORT",
    "model": "DIPR_MODEL_PATH",
    "provider": "DIPR_PROVIDER",
}
# The NVIDIA driver lists one folder per GPU here; nvidia-smi is asked where /proc says nothing
# (some containers get the tool and the devices without the driver's /proc entries).
NVIDIA_PROC_GPUS = Path("/proc/driver/nvidia/gpus")
CUDA_PROVIDER = "CUDAExecutionProvider"


def variable(field: str, flags: Iterable[str] = ()) -> str:
    """How the operator names a setting: its DIPR_ variable, and the flag when one gave it."""
    name = f"DIPR_{field.upper()}"
    flag = next((f for f in flags if FLAG_VARIABLES[f] == name), None)
    return f"--{flag} ({name})" if flag else name


def settings_problem(error: ValidationError, flags: Iterable[str] = ()) -> str:
    """The refused settings in one line, by the names the operator set them with (pydantic
    speaks of fields: `max_images`, where the operator wrote DIPR_MAX_IMAGES)."""
    from dipr.service.settings import Settings

    fields = Settings.model_fields
    problems = []
    for entry in error.errors():
        message = entry["msg"].removeprefix("Value error, ")
        if entry["loc"]:
            field = str(entry["loc"][0])
            # Never echo a secret (an API key) back into a terminal or a log collector.
            secret = "SecretStr" in repr(fields[field].annotation) if field in fields else True
            given = "" if secret else f" (got {entry['input']!r})"
            problems.append(f"{variable(field, flags)}: {message}{given}")
        else:
            # A rule across fields (a model validator) names them in its message.
            problems.append(
                re.sub(
                    r"\b(" + "|".join(map(re.escape, fields)) + r")\b",
                    lambda match: variable(match.group(1), flags),
                    message,
                )
            )
    return "; ".join(problems)


def _unreadable(path: Path) -> str | None:
    """Why `path` cannot be read, or None: opened and read, as the service would."""
    try:
        with path.open("rb") as file:
            file.read(1)
    except OSError as error:
        return error.strerror or str(error)
    return None


def unreadable_files(settings: Settings, flags: Iterable[str] = ()) -> str | None:
    """The first file the service needs and cannot read. A model that is there but breaks the
    contract is the runtime's to judge at load (the replica then says why it is unready); a
    missing one is a typo in the configuration, better refused at once."""
    needed = [("model_path", settings.model_path)]
    if settings.detect:
        needed.append(("detector_path", settings.detector_path))
    if settings.api_keys_file is not None:
        needed.append(("api_keys_file", settings.api_keys_file))
    for field, path in needed:
        reason = _unreadable(path)
        if reason is not None:
            return f"{variable(field, flags)}: cannot read {path}: {reason}"
    return None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cannot_bind(host: str, port: int) -> OSError | None:
    """Why uvicorn (asyncio's create_server) could not bind host:port now, or None: the same
    resolution and socket options, every address the host resolves to, nothing kept open."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return error
    for family, kind, protocol, _, address in dict.fromkeys(infos):
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                return error
    return None


def unavailable_addresses(settings: Settings, flags: Iterable[str] = ()) -> str | None:
    """Why the service could not listen where it is told to, or None. Checked before the model
    loads: uvicorn binds only after its start-up, which is the model's load and warm-up. Another
    process can still take the port in between; then uvicorn's own error ends the start."""
    host = variable("host", flags)
    ports = [("port", settings.port)]
    if settings.metrics_port is not None:
        if settings.metrics_port == settings.port and settings.port != 0:
            return (
                f"{variable('metrics_port')} is {variable('port', flags)} ({settings.port}): "
                "/metrics on its own port needs another one"
            )
        ports.append(("metrics_port", settings.metrics_port))
    for field, port in ports:
        error = _cannot_bind(settings.host, port)
        if error is None:
            continue
        where = _address(settings.host, port)
        reason = error.strerror or str(error)
        if isinstance(error, socket.gaierror):
            return f"{host}: cannot resolve {settings.host!r}: {reason}"
        if error.errno == errno.EADDRINUSE:
            how = variable(field, flags)
            if field == "port" and "port" not in flags:
                how += " or --port"
            return f"{where} is already in use: choose another port with {how}"
        return f"cannot listen on {where} ({host}, {variable(field, flags)}): {reason}"
    return None


def gpu_visible() -> bool:
    """Whether this machine shows an NVIDIA GPU: the driver lists one, or nvidia-smi does."""
    try:
        if any(NVIDIA_PROC_GPUS.iterdir()):
            return True
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and any(
        line.startswith("GPU ") for line in listed.stdout.splitlines()
    )


def jpeg_decoder_message(jpeg_decoder: str, gpu: bool) -> str | None:
    """Why DIPR_JPEG_DECODER cannot work on a machine that shows a GPU or not (`gpu`), as far as
    can be told without a CUDA context (this process may only supervise the processes that
    decode), or None. A GPU that is visible and still cannot decode (no nvJPEG library, a
    driver too old) leaves each replica unready, saying why (`Runtime.load`)."""
    if jpeg_decoder != "nvimgcodec":
        return None
    missing = missing_extras({"nvidia.nvimgcodec": "gpu-decode"})
    if missing is not None:
        return f"DIPR_JPEG_DECODER=nvimgcodec: {missing}"
    if not gpu:
        return (
            "DIPR_JPEG_DECODER=nvimgcodec decodes JPEGs on an NVIDIA GPU and none is visible "
            "here: unset it (OpenCV, on the CPU, is the default)"
        )
    return None


def jpeg_decoder_problem(jpeg_decoder: str) -> str | None:
    """jpeg_decoder_message for this machine."""
    if jpeg_decoder == "opencv":
        return None  # nothing to look for
    return jpeg_decoder_message(jpeg_decoder, gpu_visible())


def gpu_unused_message(provider: str, available: list[str], gpu: bool) -> str | None:
    """The warning for a GPU that ONNX Runtime cannot use (the CPU wheel is installed), or None.
    Not for DIPR_PROVIDER=cpu, which asks for the CPU; with cuda or tensorrt the replica is also
    unready, saying why, but this line names the cause at start."""
    if provider == "cpu" or not gpu or CUDA_PROVIDER in available:
        return None
    return (
        f"an NVIDIA GPU is visible but ONNX Runtime has no CUDA provider (it has "
        f"{', '.join(available)}): install onnxruntime-gpu in place of onnxruntime "
        "(pip uninstall onnxruntime, then pip install 'dipr[gpu]'; make serve does this), "
        "or set DIPR_PROVIDER=cpu to run on the CPU without this warning"
    )


def gpu_unused(provider: str) -> str | None:
    """gpu_unused_message for this machine and the installed ONNX Runtime."""
    if provider == "cpu":
        return None  # asked for; no need to look for a GPU
    import onnxruntime

    return gpu_unused_message(provider, onnxruntime.get_available_providers(), gpu_visible())
