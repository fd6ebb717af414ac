"""What `dipr serve`, `dipr export` and `dipr eval` say before they start, as functions: settings
named by their variables, unreadable files, an unused GPU, a missing extra, missing data. The
same refusals as real processes (and a taken port) are in tests/test_first_contact.py."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from dipr import extras
from dipr.evaluation import cli as eval_cli
from dipr.export import cli as export_cli
from dipr.service import preflight
from dipr.service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DIPR_"):
            monkeypatch.delenv(name)


def refusal(**environment: str) -> ValidationError:
    for name, value in environment.items():
        os.environ[name] = value
    try:
        with pytest.raises(ValidationError) as caught:
            Settings()
    finally:
        for name in environment:
            del os.environ[name]
    return caught.value


def test_a_refused_setting_is_named_by_its_variable_with_the_value_given():
    message = preflight.settings_problem(refusal(DIPR_MAX_IMAGES="0"))
    assert message == "DIPR_MAX_IMAGES: Input should be greater than or equal to 1 (got '0')"


def test_a_setting_given_by_flag_is_named_by_the_flag_too():
    message = preflight.settings_problem(refusal(DIPR_PORT="70000"), flags={"port"})
    assert message.startswith("--port (DIPR_PORT): Input should be less than or equal to 65535")


def test_several_refusals_share_one_line():
    message = preflight.settings_problem(refusal(DIPR_MAX_IMAGES="0", DIPR_LOG_FORMAT="xml"))
    assert "\n" not in message
    assert "DIPR_MAX_IMAGES: " in message and "; DIPR_LOG_FORMAT: " in message


def test_a_rule_across_settings_names_every_variable_involved():
    message = preflight.settings_problem(refusal(DIPR_MAX_QUEUE="4"))
    for name in ("DIPR_MAX_BOXES", "DIPR_MAX_IMAGES", "DIPR_MAX_QUEUE"):
        assert name in message, message
    assert "max_queue" not in message and "Value error" not in message


def test_a_refused_api_key_is_never_echoed():
    with pytest.raises(ValidationError) as caught:
        Settings(api_keys=[12345678])  # type: ignore[list-item]
    message = preflight.settings_problem(caught.value)
    assert message.startswith("DIPR_API_KEYS: ") and "12345678" not in message


def test_missing_or_unreadable_files_are_named_by_their_variable(tmp_path: Path):
    missing = tmp_path / "missing.onnx"
    settings = Settings(model_path=missing)
    assert preflight.unreadable_files(settings) == (
        f"DIPR_MODEL_PATH: cannot read {missing}: No such file or directory"
    )
    assert preflight.unreadable_files(settings, {"model"}).startswith("--model (DIPR_MODEL_PATH)")
    assert preflight.unreadable_files(Settings(detector_path=tmp_path)) == (
        f"DIPR_DETECTOR_PATH: cannot read {tmp_path}: Is a directory"
    )
    assert preflight.unreadable_files(Settings(api_keys_file=missing)).startswith(
        "DIPR_API_KEYS_FILE: cannot read"
    )


def test_no_detector_file_is_needed_without_detection(tmp_path: Path):
    settings = Settings(detect=False, detector_path=tmp_path / "missing.onnx")
    assert preflight.unreadable_files(settings) is None
    assert preflight.unreadable_files(Settings()) is None  # the committed models


def test_the_metrics_port_cannot_be_the_api_port():
    message = preflight.unavailable_addresses(Settings(port=8123, metrics_port=8123))
    assert message is not None and "DIPR_METRICS_PORT" in message and "DIPR_PORT" in message


def test_an_unknown_host_is_named():
    message = preflight.unavailable_addresses(Settings(host="no-such-host.invalid"))
    assert message is not None and message.startswith("DIPR_HOST: cannot resolve")


@pytest.mark.parametrize(
    ("provider", "available", "gpu", "warns"),
    [
        ("auto", ["CPUExecutionProvider"], True, True),
        ("cuda", ["CPUExecutionProvider"], True, True),
        ("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], True, False),
        ("auto", ["CPUExecutionProvider"], False, False),
        ("cpu", ["CPUExecutionProvider"], True, False),  # the CPU was asked for
    ],
)
def test_a_gpu_that_onnx_runtime_cannot_use_is_warned_about(provider, available, gpu, warns):
    message = preflight.gpu_unused_message(provider, available, gpu)
    assert (message is not None) == warns
    if warns:
        assert "no CUDA provider" in message and "onnxruntime-gpu" in message
        assert "\n" not in message


def test_a_gpu_jpeg_decoder_without_a_gpu_or_its_wheel_is_refused_naming_its_variable(monkeypatch):
    assert preflight.jpeg_decoder_message("opencv", gpu=False) is None
    assert preflight.jpeg_decoder_message("nvimgcodec", gpu=True) is None  # the wheel is here
    message = preflight.jpeg_decoder_message("nvimgcodec", gpu=False)
    assert message is not None and "\n" not in message
    assert message.startswith("DIPR_JPEG_DECODER=nvimgcodec decodes JPEGs on an NVIDIA GPU")
    monkeypatch.setattr(extras, "importable", lambda name: name != "nvidia.nvimgcodec")
    message = preflight.jpeg_decoder_message("nvimgcodec", gpu=True)
    assert message is not None and message.startswith("DIPR_JPEG_DECODER=nvimgcodec: ")
    assert "pip install 'dipr[gpu-decode]'" in message


@pytest.mark.skipif(preflight.gpu_visible(), reason="this machine has a GPU")
def test_on_this_machine_without_a_gpu_the_nvimgcodec_decoder_is_refused_at_start():
    message = preflight.jpeg_decoder_problem(Settings(jpeg_decoder="nvimgcodec").jpeg_decoder)
    assert message is not None and "DIPR_JPEG_DECODER" in message
    assert preflight.jpeg_decoder_problem(Settings().jpeg_decoder) is None


def nvidia_smi(folder: Path, output: str, status: int = 0) -> None:
    tool = folder / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\necho '{output}'\nexit {status}\n")
    tool.chmod(0o755)


def test_a_gpu_is_visible_in_procfs_or_to_nvidia_smi(tmp_path, monkeypatch):
    proc = tmp_path / "gpus"
    proc.mkdir()
    monkeypatch.setattr(preflight, "NVIDIA_PROC_GPUS", proc)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert preflight.gpu_visible() is False  # an empty driver folder, no nvidia-smi
    nvidia_smi(tmp_path, "No devices were found", 6)
    assert preflight.gpu_visible() is False
    nvidia_smi(tmp_path, "GPU 0: NVIDIA H200 (UUID: GPU-0)")
    assert preflight.gpu_visible() is True
    (tmp_path / "nvidia-smi").unlink()
    (proc / "0000:01:00.0").mkdir()
    assert preflight.gpu_visible() is True


def test_a_missing_export_module_names_the_extra_that_installs_it(monkeypatch):
    gone = {"torch", "onnxruntime"}
    monkeypatch.setattr(extras, "importable", lambda name: name != "onnx")
    message = extras.missing_extras(export_cli.EXPORT_MODULES)
    assert message is not None
    assert "no module onnx" in message and "pip install 'dipr[export]'" in message
    monkeypatch.setattr(extras, "importable", lambda name: name not in gone)
    message = extras.missing_extras(export_cli.EXPORT_MODULES)
    assert message is not None and "pip install 'dipr[export,cpu]'" in message
    monkeypatch.setattr(extras, "importable", lambda name: True)
    assert extras.missing_extras(export_cli.EXPORT_MODULES) is None


def test_missing_evaluation_data_says_what_it_is_and_how_to_give_it(monkeypatch, tmp_path):
    annotations = tmp_path / "test_coco.json"
    message = eval_cli.no_data(annotations)
    assert str(tmp_path) in message and "shared/data/coco_dev" in message
    for way in ("--data DIR", "--annotations FILE --images DIR", "DIPR_DEV_DATA=DIR"):
        assert way in message
    monkeypatch.setenv("DIPR_DEV_DATA", str(tmp_path))
    message = eval_cli.no_data(annotations)
    assert message.startswith(f"no evaluation data: $DIPR_DEV_DATA is {tmp_path}")
