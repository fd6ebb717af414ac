"""`dipr export`: the ONNX contracts (pose models and the person detector), dynamic batch, parity
with PyTorch, and clear errors."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file, save_file

from dipr.cli import main as dipr
from dipr.core import detector_contract, pose_contract
from dipr.core.errors import ModelError
from dipr.core.keypoints import COCO_KEYPOINTS
from dipr.export import onnx_export
from dipr.export.cli import DEFAULT_PARITY_IMAGES
from dipr.export.onnx_export import (
    TOLERANCE_FP16,
    TOLERANCE_FP32,
    ExportOptions,
    ParityError,
    PoseModule,
    build_detector_model,
    build_pose_model,
    check_parity,
    detector_parity,
    load_detector_parity_images,
    load_parity_images,
    parity,
)
from dipr.models.movenet.multipose import default_multipose_weights
from dipr.models.movenet.weights import default_weights
from dipr.models.registry import DEFAULT_DETECTOR_ONNX, DEFAULT_ONNX


@pytest.fixture(scope="module")
def thunder_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "thunder.onnx"
    assert dipr(["export", "--output", str(path)]) == 0  # includes the parity check
    return path


def test_contract_inputs_outputs_and_dynamic_batch(thunder_onnx: Path) -> None:
    model = onnx.load(str(thunder_onnx))
    (image,) = model.graph.input
    assert image.name == pose_contract.INPUT
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [256, 256, 3]
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert set(pose_contract.REQUIRED_OUTPUTS) <= outputs.keys()
    for name in outputs:
        assert outputs[name].elem_type == onnx.TensorProto.FLOAT


def test_metadata_describes_the_model(thunder_onnx: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(thunder_onnx)).metadata_props}
    assert set(pose_contract.METADATA_KEYS) <= meta.keys()
    assert meta[pose_contract.NAME] == "movenet-thunder"
    assert json.loads(meta[pose_contract.INPUT_SIZE]) == [256, 256]
    assert json.loads(meta[pose_contract.KEYPOINT_NAMES]) == list(COCO_KEYPOINTS)
    assert all(0 <= i < 17 and 0 <= j < 17 for i, j in json.loads(meta[pose_contract.SKELETON]))
    assert float(meta[pose_contract.BETA]) > 0
    assert meta[pose_contract.DEBIAS] == "true"
    weights = default_weights("thunder")
    assert meta[pose_contract.SOURCE_SHA256] == hashlib.sha256(weights.read_bytes()).hexdigest()


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_runs_at_any_batch_with_sane_outputs(thunder_onnx: Path, batch: int) -> None:
    session = ort.InferenceSession(str(thunder_onnx), providers=["CPUExecutionProvider"])
    images = load_parity_images(DEFAULT_PARITY_IMAGES, 256, batch)
    keypoints, scores, raw, _ = session.run(None, {pose_contract.INPUT: images})
    assert keypoints.shape == raw.shape == (batch, 17, 2)
    assert scores.shape == (batch, 17)
    assert np.isfinite(keypoints).all() and ((scores >= 0) & (scores <= 1)).all()
    assert ((keypoints > -0.5) & (keypoints < 255.5)).all()


def test_committed_default_model_matches_pytorch() -> None:
    """The ONNX that `make serve` uses is in sync with the committed weights and head."""
    meta = {p.key: p.value for p in onnx.load(str(DEFAULT_ONNX)).metadata_props}
    window = meta[pose_contract.WINDOW]
    options = ExportOptions(
        beta=float(meta[pose_contract.BETA]),
        region=meta[pose_contract.REGION],  # type: ignore[arg-type]
        window=int(window) if window else 7,
    )
    pose, expected_meta = build_pose_model(options)
    assert meta[pose_contract.SOURCE_SHA256] == expected_meta[pose_contract.SOURCE_SHA256]
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
    assert meta[pose_contract.PRECISION] == "fp16"
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert outputs[pose_contract.KEYPOINTS] == onnx.TensorProto.FLOAT


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


# The person detector (`dipr.core.detector_contract`).

DETECTOR = "movenet-multipose"


@pytest.fixture(scope="module")
def detector_session() -> ort.InferenceSession:
    return ort.InferenceSession(str(DEFAULT_DETECTOR_ONNX), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def detector_images() -> np.ndarray:
    return load_detector_parity_images(DEFAULT_PARITY_IMAGES, (256, 256), 8)


def test_committed_detector_follows_the_detector_contract(
    detector_session: ort.InferenceSession,
) -> None:
    info = detector_contract.describe(detector_session)
    assert (info.name, info.input_size, info.max_persons) == (DETECTOR, (256, 256), 6)
    assert info.keypoint_names == COCO_KEYPOINTS
    assert set(detector_contract.DETECTOR_KEYS) <= info.metadata.keys()
    assert info.metadata[detector_contract.PRECISION] == "fp32"
    (image,) = detector_session.get_inputs()
    assert isinstance(image.shape[0], str) and image.shape[1:] == [256, 256, 3]  # symbolic batch
    outputs = {o.name: o for o in detector_session.get_outputs()}
    assert [outputs[name].shape[1:] for name in detector_contract.OUTPUTS] == [
        [6, 4],
        [6],
        [6, 17, 2],
        [6, 17],
    ]
    assert {o.type for o in outputs.values()} == {"tensor(float)"}


def test_a_pose_model_is_not_a_detector() -> None:
    session = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelError):  # no detector outputs, no detector role
        detector_contract.describe(session)


def test_committed_detector_is_built_from_the_committed_weights(
    detector_session: ort.InferenceSession,
) -> None:
    metadata = detector_session.get_modelmeta().custom_metadata_map
    weights = default_multipose_weights()
    assert metadata[detector_contract.SOURCE_WEIGHTS] == weights.name
    assert (
        metadata[detector_contract.SOURCE_SHA256]
        == hashlib.sha256(weights.read_bytes()).hexdigest()
    )


def test_committed_detector_batches_rows_per_image(
    detector_session: ort.InferenceSession, detector_images: np.ndarray
) -> None:
    """Batch 3 gives each image the rows it gets alone: the top-k and arg-maxes run per image."""
    batched = detector_session.run(None, {detector_contract.INPUT: detector_images[:3]})
    for i in range(3):
        alone = detector_session.run(None, {detector_contract.INPUT: detector_images[i : i + 1]})
        for together, single in zip(batched, alone, strict=True):
            np.testing.assert_allclose(together[i : i + 1], single, rtol=0, atol=1e-4)
    boxes, box_scores, keypoints, keypoint_scores = batched
    assert ((box_scores >= 0) & (box_scores <= 1)).all()
    assert ((keypoint_scores >= 0) & (keypoint_scores <= 1)).all()
    assert ((boxes >= 0) & (boxes <= 256)).all()
    assert (boxes[..., 2:] >= boxes[..., :2]).all()
    assert np.isfinite(keypoints).all()
    # The composites (first two images) hold at least two people each.
    assert ((box_scores[:2] >= 0.3).sum(axis=1) >= 2).all()


def test_committed_detector_matches_pytorch(detector_images: np.ndarray) -> None:
    detector, _ = build_detector_model(ExportOptions(arch=DETECTOR))
    worst = detector_parity(detector, DEFAULT_DETECTOR_ONNX, detector_images)
    assert max(worst.coordinates.values()) <= 0.01  # input pixels
    assert max(worst.scores.values()) <= 1e-4


@pytest.mark.parametrize(
    "option",
    [
        ["--beta", "5"],
        ["--region", "person"],
        ["--window", "7"],
        ["--debias", "paper"],
        ["--input-size", "256x256"],
        ["--mmpose-config", "ipr_res50"],
    ],
)
def test_detector_refuses_pose_only_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    output = tmp_path / "detector.onnx"
    assert dipr(["export", "--arch", DETECTOR, *option, "-o", str(output)]) == 1
    error = capsys.readouterr().err
    assert f"{DETECTOR} is a person detector, not a pose model: {option[0]} applies" in error
    assert not output.exists()  # refused before anything was written


def test_detector_refuses_a_training_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "last.safetensors"
    code = dipr(["export", "--arch", DETECTOR, "--checkpoint", str(checkpoint), "--skip-parity"])
    assert code == 1
    assert "has no training checkpoints" in capsys.readouterr().err


def test_detector_scores_are_held_to_their_own_tolerance() -> None:
    check_parity({1: 0.0, 3: 5e-5}, 1e-4, unit="")
    with pytest.raises(ParityError, match=r"^parity failed: 0.0002 > 0.0001$"):
        check_parity({1: 0.0, 3: 2e-4}, 1e-4, unit="")


def test_detector_export_refuses_an_onnx_model_that_does_not_match_pytorch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Parity runs PyTorch on other weights (the input normalisation shifted by 1 %) than the
    ONNX model that was written (the committed detector, copied rather than re-exported)."""
    weights = load_file(default_multipose_weights())
    weights["input_shift"] = weights["input_shift"] * 1.01
    shifted = tmp_path / "shifted.safetensors"
    save_file(weights, shifted)

    def write_committed_detector(
        model: torch.nn.Module, metadata: dict[str, str], path: Path
    ) -> onnx.ModelProto:
        path.write_bytes(DEFAULT_DETECTOR_ONNX.read_bytes())
        return onnx.load(str(path))

    monkeypatch.setattr(onnx_export, "export_onnx", write_committed_detector)
    output = tmp_path / "detector.onnx"
    assert dipr(["export", "--arch", DETECTOR, "--weights", str(shifted), "-o", str(output)]) == 1
    assert "parity failed" in capsys.readouterr().err


def test_detector_exports_in_fp16_and_passes_parity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole `dipr export --arch movenet-multipose` path, in fp16 (the fp32 one wrote the
    committed file, checked above): fp16 kernels, an fp32 decode, parity against fp32 PyTorch."""
    path = tmp_path / "multipose16.onnx"
    assert dipr(["export", "--arch", DETECTOR, "--fp16", "--output", str(path)]) == 0
    assert "parity ok" in capsys.readouterr().out
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    info = detector_contract.describe(session)
    assert info.metadata[detector_contract.PRECISION] == "fp16"
    model = onnx.load(str(path))
    kernels = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    kernel_types = {i.data_type for i in model.graph.initializer if i.name in kernels}
    assert kernel_types == {onnx.TensorProto.FLOAT16}
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert set(outputs.values()) == {onnx.TensorProto.FLOAT}


@pytest.mark.parametrize("path", [DEFAULT_ONNX, DEFAULT_DETECTOR_ONNX], ids=["pose", "detector"])
def test_the_uint8_input_goes_straight_into_a_cast(path: Path) -> None:
    """TensorRT takes a uint8 network input only into a Cast: a Transpose first (NHWC → NCHW)
    fails its engine build or leaves that node to CUDA. (The exporter's Shape, for the dynamic
    batch, reads the dimensions only.)"""
    graph = onnx.load(str(path)).graph
    consumers = [node.op_type for node in graph.node if pose_contract.INPUT in node.input]
    assert "Cast" in consumers and set(consumers) <= {"Cast", "Shape"}, consumers
