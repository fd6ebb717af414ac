"""The settings: read from DIPR_* variables, validated, with the documented defaults."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from dipr.core.crops import PADDING
from dipr.models.registry import DEFAULT_ONNX
from dipr.service.settings import Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DIPR_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_documented_ones():
    s = Settings()
    assert (s.host, s.port, s.provider) == ("127.0.0.1", 8000, "auto")
    assert s.model_path == DEFAULT_ONNX and s.model_path.is_file()
    assert (s.max_batch_size, s.max_queue, s.batch_delay_ms) == (16, 256, 0.0)
    assert (s.request_timeout_s, s.retry_after_s) == (30.0, 1)
    assert (s.max_request_bytes, s.max_image_pixels) == (32 * 1024 * 1024, 50_000_000)
    assert (s.max_images, s.max_boxes, s.failure_threshold) == (16, 64, 3)
    assert s.reduced_decode is True and s.log_format == "json"
    assert s.api_keys == [] and s.cors_origins == [] and s.metrics_port is None


def test_the_service_pads_boxes_as_evaluation_and_training_do():
    # dipr eval and dipr train crop with core.crops.PADDING; the service's default must agree.
    assert Settings().box_padding == PADDING == 1.25


def test_values_come_from_dipr_variables(monkeypatch):
    monkeypatch.setenv("DIPR_PORT", "9001")
    monkeypatch.setenv("DIPR_PROVIDER", "cpu")
    monkeypatch.setenv("DIPR_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("DIPR_REDUCED_DECODE", "false")
    monkeypatch.setenv("DIPR_MODEL_PATH", "/models/x.onnx")
    monkeypatch.setenv("PORT", "1")  # no prefix: not ours
    s = Settings()
    assert (s.port, s.provider, s.max_batch_size, s.reduced_decode) == (9001, "cpu", 8, False)
    assert s.model_path == Path("/models/x.onnx")


def test_lists_are_comma_separated_and_keys_stay_secret(monkeypatch):
    monkeypatch.setenv("DIPR_API_KEYS", " k1 ,k2,, ")
    monkeypatch.setenv("DIPR_CORS_ORIGINS", "https://a.example, https://b.example")
    s = Settings()
    assert s.all_api_keys() == [b"k1", b"k2"]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert "k1" not in repr(s) and "k2" not in str(s)


def test_api_keys_from_a_file_join_those_of_the_variable(monkeypatch, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("from-file\n\n  spaced  \n")
    monkeypatch.setenv("DIPR_API_KEYS", "from-env")
    monkeypatch.setenv("DIPR_API_KEYS_FILE", str(keys))
    assert Settings().all_api_keys() == [b"from-env", b"from-file", b"spaced"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DIPR_PORT", "65536"),
        ("DIPR_PORT", "http"),
        ("DIPR_PROVIDER", "rocm"),
        ("DIPR_MAX_BATCH_SIZE", "0"),
        ("DIPR_BATCH_DELAY_MS", "-1"),
        ("DIPR_MAX_QUEUE", "0"),
        ("DIPR_REQUEST_TIMEOUT_S", "0"),
        ("DIPR_RETRY_AFTER_S", "0"),
        ("DIPR_BOX_PADDING", "0.9"),
        ("DIPR_FAILURE_THRESHOLD", "0"),
        ("DIPR_LOG_FORMAT", "xml"),
        ("DIPR_REDUCED_DECODE", "maybe"),
        ("DIPR_JPEG_DECODER", "nvjpeg"),
        ("DIPR_METRICS_PORT", "-1"),
    ],
)
def test_bad_values_are_refused_at_start(monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


def test_jpegs_are_decoded_by_opencv_unless_nvimgcodec_is_named(monkeypatch):
    assert Settings().jpeg_decoder == "opencv"
    monkeypatch.setenv("DIPR_JPEG_DECODER", "nvimgcodec")
    assert Settings().jpeg_decoder == "nvimgcodec"


def test_a_request_larger_than_the_queue_could_never_be_admitted(monkeypatch):
    monkeypatch.setenv("DIPR_MAX_QUEUE", "32")
    with pytest.raises(ValidationError, match="must not exceed max_queue"):
        Settings()  # max_boxes 64 > 32
    monkeypatch.setenv("DIPR_MAX_BOXES", "32")
    monkeypatch.setenv("DIPR_MAX_IMAGES", "8")
    assert Settings().max_queue == 32


def test_settings_are_read_once_and_frozen():
    s = Settings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]


def test_the_default_decode_budget_is_a_third_of_the_deadline_of_decoding():
    assert Settings(request_timeout_s=30).decode_budget(2) == pytest.approx(2000)
    assert Settings(request_timeout_s=10).decode_budget(4) == pytest.approx(4000 / 3)
    assert Settings(request_timeout_s=10, decode_budget_mp=500).decode_budget(4) == 500
