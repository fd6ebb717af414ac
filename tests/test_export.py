"""`dipr export`: the ONNX contract, dynamic batch, parity with PyTorch, and clear errors."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dipr.cli import main as dipr
from dipr.core import contract
from dipr.core.keypoints import COCO_KEYPOINTS
from dipr.export import onnx_export
from dipr.export.cli import DEFAULT_PARITY_IMAGES
from dipr.export.onnx_export import (
    TOLERANCE_FP16,
    TOLERANCE_FP32,
    ExportOptions,
    ParityError,
    PoseModule,
    build_pose_model,
    check_parity,
    load_parity_images,
    parity,
)
from dipr.models.movenet.weights import default_weights
from dipr.models.registry import DEFAULT_ONNX


@pytest.fixture(scope="module")
def thunder_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "thunder.onnx"
    assert dipr(["export", "--output", str(path)]) == 0  # includes the parity check
    return path


def test_contract_inputs_outputs_and_dynamic_batch(thunder_onnx: Path) -> None:
    model = onnx.load(str(thunder_onnx))
    (image,) = model.graph.input
    assert image.name == contract.INPUT
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [256, 256, 3]
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert set(contract.REQUIRED_OUTPUTS) <= outputs.keys()
    for name in outputs:
        assert outputs[name].elem_type == onnx.TensorProto.FLOAT


def test_metadata_describes_the_model(thunder_onnx: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(thunder_onnx)).metadata_props}
    assert set(contract.METADATA_KEYS) <= meta.keys()
    assert meta[contract.NAME] == "movenet-thunder"
    assert json.loads(meta[contract.INPUT_SIZE]) == [256, 256]
    assert json.loads(meta[contract.KEYPOINT_NAMES]) == list(COCO_KEYPOINTS)
    assert all(0 <= i < 17 and 0 <= j < 17 for i, j in json.loads(meta[contract.SKELETON]))
    assert float(meta[contract.BETA]) > 0
    assert meta[contract.DEBIAS] == "true"
    weights = default_weights("thunder")
    assert meta[contract.SOURCE_SHA256] == hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_runs_at_any_batch_with_sane_outputs(thunder_onnx: Path, batch: int) -> None:
    session = ort.InferenceSession(str(thunder_onnx), providers=["CPUExecutionProvider"])
    images = load_parity_images(DEFAULT_PARITY_IMAGES, 256, batch)
    keypoints, scores, raw, _ = session.run(None, {contract.INPUT: images})
    assert keypoints.shape == raw.shape == (batch, 17, 2)
    assert scores.shape == (batch, 17)
    assert np.isfinite(keypoints).all() and ((scores >= 0) & (scores <= 1)).all()
    assert ((keypoints > -0.5) & (keypoints < 255.5)).all()


def test_committed_default_model_matches_pytorch() -> None:
    """The ONNX that `make serve` uses is in sync with the committed weights and head."""
    meta = {p.key: p.value for p in onnx.load(str(DEFAULT_ONNX)).metadata_props}
    window = meta[contract.WINDOW]
    options = ExportOptions(
        beta=float(meta[contract.BETA]),
        region=meta[contract.REGION],  # type: ignore[arg-type]
        window=int(window) if window else 7,
    )
    pose, expected_meta = build_pose_model(options)
    assert meta[contract.SOURCE_SHA256] == expected_meta[contract.SOURCE_SHA256]
    worst = parity(pose, DEFAULT_ONNX, load_parity_images(DEFAULT_PARITY_IMAGES, 256, 8))
    assert max(worst.values()) <= 0.01


@pytest.mark.parametrize(
    ("tolerance", "accepted", "refused"),
    [(TOLERANCE_FP32, 0.005, 0.02), (TOLERANCE_FP16, 0.4, 0.6)],
)
def test_parity_verdict_holds_each_precision_to_its_tolerance(
    tolerance: float, accepted: float, refused: float
) -> None:
    """fp32 exports are held to 0.01 px and fp16 ones to 0.5 px, at every batch size."""
    check_parity({1: 0.0, 3: accepted, 8: accepted / 2}, tolerance)
    with pytest.raises(ParityError, match=rf"^parity failed: {refused:.3g} px > {tolerance} px$"):
        check_parity({1: 0.0, 3: refused, 8: accepted}, tolerance)
    with pytest.raises(ParityError, match="parity failed: nan px"):  # a broken graph fails too
        check_parity({1: 0.0, 3: math.nan, 8: accepted}, tolerance)


def test_export_refuses_an_onnx_model_that_does_not_match_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The written model is exported with β 5.5 while parity runs the β 5 PyTorch network: a
    difference above the fp32 tolerance, yet small enough that a loosened tolerance passes it."""
    export_onnx = onnx_export.export_onnx
    measure = onnx_export.parity
    measured: dict[int, float] = {}

    def export_beta_5_5(pose: PoseModule, metadata: dict[str, str], path: Path) -> onnx.ModelProto:
        other, _ = build_pose_model(ExportOptions(arch="movenet-lightning", beta=5.5))
        return export_onnx(other, metadata, path)

    def recorded_parity(pose: PoseModule, onnx_path: Path, images: np.ndarray) -> dict[int, float]:
        measured.update(measure(pose, onnx_path, images))
        return measured

    monkeypatch.setattr(onnx_export, "export_onnx", export_beta_5_5)
    monkeypatch.setattr(onnx_export, "parity", recorded_parity)
    code = dipr(["export", "--arch", "movenet-lightning", "-o", str(tmp_path / "beta.onnx")])
    assert code == 1
    assert "parity failed" in capsys.readouterr().err
    assert 0.01 < max(measured.values()) < 3


def test_fp16_keeps_the_head_in_fp32_and_passes_parity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "lightning16.onnx"
    assert dipr(["export", "--variant", "lightning", "--fp16", "--output", str(path)]) == 0
    assert "parity ok" in capsys.readouterr().out
    model = onnx.load(str(path))
    kernels = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    kernel_types = {i.data_type for i in model.graph.initializer if i.name in kernels}
    assert kernel_types == {onnx.TensorProto.FLOAT16}  # the backbone is fp16
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[contract.PRECISION] == "fp16"
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs[contract.KEYPOINTS] == onnx.TensorProto.FLOAT


def test_missing_weights_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = dipr(
        [
            "export",
            "--weights",
            str(tmp_path / "nope.safetensors"),
            "--output",
            str(tmp_path / "m.onnx"),
            "--skip-parity",
        ]
    )
    assert code == 1
    assert "weights not found" in capsys.readouterr().err


def test_unknown_variant_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        dipr(["export", "--variant", "blazing"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'blazing'" in capsys.readouterr().err


def test_unwritable_output_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = dipr(["export", "--output", str(blocker / "m.onnx"), "--skip-parity"])
    assert code == 1
    assert "cannot write" in capsys.readouterr().err
