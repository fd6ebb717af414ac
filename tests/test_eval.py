"""`dipr eval`: the committed ONNX run by onnxruntime on the COCO dev set, and its metrics."""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dipr.evaluation import cli as eval_cli
from dipr.evaluation import coco_eval
from dipr.evaluation.cli import DEFAULT_DATA, DEFAULT_MODEL
from dipr.service.crops import Crop, crop_for_box

ANNOTATIONS = DEFAULT_DATA / "test_coco.json"
needs_data = pytest.mark.skipif(
    not ANNOTATIONS.is_file(), reason=f"COCO dev set not found at {DEFAULT_DATA}"
)


def dipr_eval(*argv: str) -> int:
    """`dipr eval ARGV` in-process (the subprocess test goes through the real `dipr.cli`)."""
    parser = argparse.ArgumentParser(prog="dipr")
    eval_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


# --- units: OKS and the coordinate convention (no data needed) -----------------------------------


def _ground_truth() -> np.ndarray:
    rng = np.random.default_rng(0)
    gt = np.zeros((17, 3))
    gt[:, :2] = rng.uniform(10, 200, (17, 2))
    gt[:, 2] = 2
    gt[[3, 4], 2] = 0  # unlabelled ears: must not count
    return gt


def test_oks_of_the_ground_truth_itself_is_one():
    gt = _ground_truth()
    assert coco_eval.oks(gt[:, :2], gt, area=5000.0) == pytest.approx(1.0)


def test_oks_ignores_unlabelled_keypoints_and_matches_the_formula():
    gt = _ground_truth()
    predicted = gt[:, :2].copy()
    predicted[3] += 100  # unlabelled: no effect
    predicted[0, 0] += 3.0  # nose off by 3 px
    area = 5000.0
    sigma = coco_eval.COCO_SIGMAS[0]
    expected = (14 + math.exp(-9 / (2 * (2 * sigma) ** 2 * area))) / 15
    assert coco_eval.oks(predicted, gt, area) == pytest.approx(expected)


def test_oks_agrees_with_pycocotools():
    from pycocotools.cocoeval import COCOeval

    gt = _ground_truth()
    predicted = gt[:, :2] + np.random.default_rng(1).normal(0, 4, (17, 2))
    evaluator = COCOeval(iouType="keypoints")
    gt_ann = {"keypoints": gt.ravel().tolist(), "area": 5000.0, "bbox": [0, 0, 220, 220]}
    dt_ann = {"keypoints": np.c_[predicted, np.ones(17)].ravel().tolist(), "score": 1.0}
    evaluator._gts[1, 1] = [gt_ann]
    evaluator._dts[1, 1] = [dt_ann]
    evaluator.params.maxDets = [20]
    reference = evaluator.computeOks(1, 1)[0, 0]
    assert coco_eval.oks(predicted, gt, 5000.0) == pytest.approx(reference)


def test_index_pixels_become_coco_continuous_coordinates():
    # Centre of the first pixel: index 0 ours, 0.5 in COCO.
    identity = Crop(matrix=np.eye(2, 3), inverse=np.eye(2, 3))
    assert coco_eval._to_coco(np.zeros((1, 1, 2)), [identity]) == pytest.approx(0.5)
    # A COCO box (pixel edges) of the whole 256² image maps onto a 256² input one to one, so
    # boxes go into crop_for_box as COCO gives them and only keypoints need the +0.5.
    crop = crop_for_box((0.0, 0.0, 256.0, 256.0), (256, 256), padding=1.0)
    assert crop.matrix == pytest.approx(np.eye(2, 3))


# --- the real thing: committed ONNX, real dev data -----------------------------------------------


@pytest.fixture(scope="module")
def rows() -> dict[str, coco_eval.Row]:
    dataset = coco_eval.load_dataset(ANNOTATIONS, DEFAULT_DATA)
    return {row.method: row for row in coco_eval.evaluate_model(DEFAULT_MODEL, dataset)}


@needs_data
def test_eval_gives_all_three_methods_with_sane_metrics(rows):
    assert set(rows) == {"official", "raw", "debiased"}
    for row in rows.values():
        m = row.metrics
        assert m.oks_persons == 12
        for value in (m.mean_oks, m.ap, m.ap50, m.ap75):
            assert 0.0 <= value <= 1.0, row
        assert 0.0 < m.mean_px_error < 50.0, row


@needs_data
def test_crop_model_inverse_path_is_right(rows):
    # REFERENCE: the official decode scores 0.836 mean OKS on coco_dev; a wrong affine, axis
    # swap or stride mix-up drops it far below.
    assert rows["official"].metrics.mean_oks > 0.75
    assert rows["debiased"].metrics.mean_oks > 0.75
    assert rows["official"].metrics.mean_px_error < 15.0


@needs_data
def test_dipr_eval_prints_one_table_and_writes_json(tmp_path, capsys):
    from dipr.cli import main  # the registered subcommand, as the console script runs it

    out = tmp_path / "eval.json"
    assert main(["eval", "--json", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.count("| model | method | mean OKS |") == 1
    assert "loading annotations" not in stdout.lower()  # pycocotools kept quiet
    saved = json.loads(out.read_text())
    assert [r["method"] for r in saved] == ["official", "raw", "debiased"]
    # One model, described from its metadata (name, β, region, window).
    assert len({r["model"] for r in saved}) == 1
    assert saved[0]["model"].startswith("movenet-thunder β=")


@needs_data
def test_evaluating_a_model_never_loads_torch():
    # Only --sweep exports, and so needs torch: `dipr eval --model X` must run on a serving install.
    code = (
        "import sys; from dipr.cli import main; code = main(['eval']); "
        "print('TORCH LOADED' if 'torch' in sys.modules else 'no torch'); sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "no torch" in result.stdout


# --- errors --------------------------------------------------------------------------------------


def test_missing_annotations_is_a_clear_error(tmp_path, capsys):
    assert dipr_eval("--annotations", str(tmp_path / "nope.json")) == 1
    assert "annotations file not found" in capsys.readouterr().err


@needs_data
def test_missing_image_is_a_clear_error(tmp_path, capsys):
    coco = json.loads(ANNOTATIONS.read_text())
    coco["images"][0]["file_name"] = "missing.jpg"
    annotations = tmp_path / "coco.json"
    annotations.write_text(json.dumps(coco))
    assert dipr_eval("--annotations", str(annotations), "--images", str(DEFAULT_DATA)) == 1
    assert "missing.jpg" in capsys.readouterr().err


@needs_data
def test_model_without_the_contract_outputs_is_a_clear_error(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["something_else"])],
        "not-a-pose-model",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 256, 256, 3])],
        [helper.make_tensor_value_info("something_else", TensorProto.UINT8, ["N", 256, 256, 3])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    assert dipr_eval("--model", str(path)) == 1
    err = capsys.readouterr().err
    assert "contract" in err and "keypoints_raw" in err


@needs_data
def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert dipr_eval("--model", str(tmp_path / "nope.onnx")) == 1
    assert "model not found" in capsys.readouterr().err


def test_default_data_is_beside_the_repository():
    repository = Path(__file__).resolve().parents[1]
    assert DEFAULT_DATA.parents[2] == repository.parent
    assert DEFAULT_DATA.parts[-3:] == ("shared", "data", "coco_dev")
