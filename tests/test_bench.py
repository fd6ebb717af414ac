"""`dipr bench --quick`: the whole benchmark pipeline runs and reports consistent figures.
(A smoke run: speed goals are judged by `make bench`, not by tests.)"""

import json
import shutil
from pathlib import Path

import pytest

from dipr.cli import main as dipr


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey (Debian package) is not installed")
def test_quick_bench_writes_json_table_and_plot(tmp_path: Path) -> None:
    arguments = ["bench", "--quick", "--service-env", "DIPR_MAX_BATCH_SIZE=8"]
    assert dipr([*arguments, "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    # One batch at a time on every core, and (CPU) two at once on a share each, as the service.
    assert [(r["batch_size"], r["streams"]) for r in report["limit"]] == [
        (1, 1),
        (1, 2),
        (4, 1),
        (4, 2),
    ]
    assert {(r["target"], r["concurrency"], r["crops_per_request"]) for r in report["service"]} == {
        ("service", 1, 1),
        ("service", 8, 1),
        ("service", 8, 4),
        ("service, no boxes", 1, 3),  # the group photo: three persons found
        ("service, no boxes", 8, 3),
    }
    assert {(r["target"], r["concurrency"]) for r in report["naive"]} == {
        ("naive", 1),
        ("naive", 8),
        ("naive, no boxes", 1),
        ("naive, no boxes", 8),
    }
    assert report["group_persons"] == 3
    assert [(r["batch_size"], r["streams"]) for r in report["detection_limit"]] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    no_boxes = next(
        r for r in report["service"] if (r["target"], r["concurrency"]) == ("service, no boxes", 8)
    )
    assert report["ratios"]["no_boxes_service_c8_images_per_s_over_limit_best"] == pytest.approx(
        no_boxes["requests_per_s"] / max(r["images_per_s"] for r in report["detection_limit"])
    )
    for result in report["service"] + report["naive"]:
        assert result["errors"] == 0 and result["requests"] > 0
        assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    for result in report["limit"]:
        assert result["images_per_s"] > 0
    best = max(r["images_per_s"] for r in report["limit"])
    service_best = max(r["crops_per_s"] for r in report["service"] if r["target"] == "service")
    ratio = report["ratios"]["service_best_images_per_s_over_limit_best"]
    assert ratio == pytest.approx(service_best / best)
    assert report["provider"] == "cpu"
    assert report["service_env"] == {"DIPR_MAX_BATCH_SIZE": "8"}
    table = (tmp_path / "bench.md").read_text()
    assert "| limit (ORT alone, one batch at a time) | batch 1 |" in table
    assert "| limit (ORT alone, 2 batches at once) | batch 4 |" in table
    assert "ONNX Runtime CPU, DIPR_MAX_BATCH_SIZE=8;" in table
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob("body-*.bin"))
    # The variants (issue #14): the four exported (the int8 ones through their accuracy gate),
    # each measured alone, the two precisions and int8+flip through the service.
    variants = json.loads((tmp_path / "variants.json").read_text())
    assert variants["refused"] == {}
    rows = {row["variant"]: row for row in variants["rows"]}
    assert list(rows) == ["fp32", "int8", "flip", "int8+flip"]
    for name, row in rows.items():
        assert row["latency_ms"] > 0 and row["images_per_s"] > 0
        assert (row["service"] is not None) == (name != "flip")
        if row["service"] is not None:
            assert row["service"]["errors"] == 0 and row["service"]["requests"] > 0
    assert "## Variants: fp32, int8, flip test" in table
    assert "| int8 | " in table and "×)" in table


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey (Debian package) is not installed")
def test_cuda_without_a_gpu_fails_instead_of_measuring_the_cpu(tmp_path: Path, capsys) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA: the run would measure it")
    assert dipr(["bench", "--provider", "cuda", "--quick", "--out", str(tmp_path)]) == 1
    assert "CUDA was requested" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_service_env_must_be_name_equals_value(tmp_path: Path, capsys) -> None:
    assert dipr(["bench", "--service-env", "DIPR_MAX_BATCH_SIZE", "--out", str(tmp_path)]) == 2
    assert "DIPR_NAME=VALUE" in capsys.readouterr().err
