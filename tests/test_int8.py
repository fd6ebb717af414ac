"""`dipr export --int8`: static int8 with the head and decode in fp32, calibrated on photos, and
written only when its mean OKS on the dev set stays within --max-oks-drop of fp32."""

import contextlib
import io
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dipr.cli import main as dipr
from dipr.core import pose_contract
from dipr.core.coco import dev_data, load_keypoint_set
from dipr.export.accuracy_gate import DEFAULT_MAX_OKS_DROP, AccuracyGateError, check, compare
from dipr.export.calibration import CalibrationError, CalibrationSet
from dipr.export.quantize import quantised_nodes, quantize_int8

QUANTISATION_OPS = {"QuantizeLinear", "DequantizeLinear"}


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The default int8 export (fixture photos, gated on the dev set) and what it printed."""
    path = tmp_path_factory.mktemp("int8") / "thunder-int8.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = dipr(["export", "--int8", "--skip-parity", "--output", str(path)])
    assert status == 0, printed.getvalue()
    return path, printed.getvalue()


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fp32 graph the int8 export quantised (the same export, node for node)."""
    path = tmp_path_factory.mktemp("fp32") / "thunder.onnx"
    assert dipr(["export", "--skip-parity", "--output", str(path)]) == 0
    return path


def test_the_export_prints_both_figures_and_records_how_it_was_made(
    int8_export: tuple[Path, str],
) -> None:
    path, printed = int8_export
    assert f"of {dev_data() / 'test_coco.json'}: fp32 0.8" in printed
    assert ", int8 0.8" in printed
    metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert metadata[pose_contract.PRECISION] == "int8"
    assert metadata[pose_contract.CALIBRATION_INPUTS] == "12"  # 3 photos x 2 crops x mirrored
    assert len(metadata[pose_contract.CALIBRATION_SHA256]) == 64
    assert metadata[pose_contract.ACCURACY_GATE].startswith("mean OKS 0.8")
    assert metadata[pose_contract.FLIP_TEST] == "false"


def test_the_network_is_int8_and_the_head_stays_fp32(
    fp32_export: Path, int8_export: tuple[Path, str]
) -> None:
    fp32 = onnx.load(fp32_export)
    int8 = onnx.load(int8_export[0])
    quantised = quantised_nodes(fp32)
    convolutions = {n.name for n in fp32.graph.node if n.op_type == "Conv"}
    # The network: every convolution but the stem reads int8 weights through a DequantizeLinear.
    producer = {output: node for node in int8.graph.node for output in node.output}
    int8_weights = {
        init.name for init in int8.graph.initializer if init.data_type == onnx.TensorProto.INT8
    }
    dequantised_weights = {
        node.name
        for node in int8.graph.node
        if node.op_type == "Conv"
        and node.input[1] in producer
        and producer[node.input[1]].op_type == "DequantizeLinear"
        and producer[node.input[1]].input[0] in int8_weights
    }
    assert dequantised_weights == convolutions & quantised
    assert len(convolutions - quantised) == 1  # the stem
    # The head and decode: every node after the network is there unchanged, and none reads a
    # quantised tensor or is a quantisation op.
    head = {n.name: n.op_type for n in fp32.graph.node if n.name not in quantised}
    by_name = {node.name: node for node in int8.graph.node}
    for name, op_type in head.items():
        assert by_name[name].op_type == op_type
        for tensor in by_name[name].input:
            assert tensor not in int8_weights
            if tensor in producer:
                assert producer[tensor].op_type != "QuantizeLinear"
    assert not any(op_type in QUANTISATION_OPS for op_type in head.values())


def test_the_gate_refuses_an_int8_model_whose_ranges_are_too_narrow(
    fp32_export: Path, int8_export: tuple[Path, str], tmp_path: Path
) -> None:
    """Every activation range of the exported int8 model narrowed 4× (what calibrating on photos
    of far less contrast than those served would give): mean OKS collapses (0.84 → 0.05 on the
    dev set), refused at the default 0.01. Not a calibration set: MoveNet barely depends on its
    calibration (ReLU6 fixes most ranges at [0, 6]; colour negatives, flat grey, black, noise,
    dark or bright photos all lose 0.005–0.014), so on 12 persons no photo set separates from
    the fixture photos' 0.008 by more than the dev set's noise (one grey level changed in 0.01 %
    of its crops moved that figure by 0.0056)."""
    model = onnx.load(int8_export[0])
    scales = {node.input[1] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    assert len(scales) > 50  # every quantised activation
    for initializer in model.graph.initializer:
        if initializer.name in scales:
            scale = numpy_helper.to_array(initializer)
            narrowed = numpy_helper.from_array((scale / 4).astype(scale.dtype), initializer.name)
            initializer.CopyFrom(narrowed)
    broken = tmp_path / "narrow.onnx"
    onnx.save(model, broken)
    data = dev_data()
    comparison = compare(
        fp32_export, broken, load_keypoint_set(data / "test_coco.json", data), "dev"
    )
    assert comparison.drop > 0.5
    with pytest.raises(AccuracyGateError, match=r"int8 loses 0\.\d+ mean OKS"):
        check(comparison, DEFAULT_MAX_OKS_DROP)


def test_a_refused_model_is_not_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "refused.onnx"
    status = dipr(
        ["export", "--int8", "--skip-parity", "--max-oks-drop", "0.001", "-o", str(output)]
    )
    captured = capsys.readouterr()
    assert status == 1
    assert "fp32 0.8397, int8 0.8" in captured.out  # both figures, before the verdict
    assert "--max-oks-drop 0.001" in captured.err and f"{output} not written" in captured.err
    assert list(tmp_path.iterdir()) == []  # no model, no staged leftovers


def test_synthetic_calibration_without_ranges_is_a_clear_error(
    fp32_export: Path, tmp_path: Path
) -> None:
    """ONNX Runtime's histograms fail on inputs that barely vary some activation (16-pixel
    stripes, without the borders a photo's crop has): a CalibrationError, not a traceback."""
    columns = np.arange(256)[None, None, :, None]
    stripes = np.broadcast_to((columns // 16 % 2 * 255).astype(np.uint8), (2, 256, 256, 3))
    calibration = CalibrationSet(tmp_path, np.ascontiguousarray(stripes), "stripes")
    with pytest.raises(CalibrationError, match="calibrate on photos like those served"):
        quantize_int8(fp32_export, tmp_path / "never.onnx", calibration)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fp16"], "--int8 and --fp16 are two precisions"),
        (["--max-oks-drop", "-1"], "--max-oks-drop must be 0 or more"),
        (["--calibration", "/nonexistent"], "calibration folder not found: /nonexistent"),
        (["--eval-data", "/nonexistent"], "--eval-data has no /nonexistent/test_coco.json"),
    ],
)
def test_int8_options_are_checked_before_the_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    output = tmp_path / "never.onnx"
    assert dipr(["export", "--int8", *arguments, "-o", str(output)]) == 1
    assert message in capsys.readouterr().err
    assert not output.exists()


@pytest.mark.parametrize(
    ("flag", "message"),
    [("--int8", "is not offered in int8"), ("--flip-test", "has no flip test")],
)
def test_the_detector_has_neither_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, message: str
) -> None:
    output = tmp_path / "never.onnx"
    assert dipr(["export", "--arch", "movenet-multipose", flag, "-o", str(output)]) == 1
    assert message in capsys.readouterr().err
    assert not output.exists()
