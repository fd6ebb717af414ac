"""`dipr eval`: the committed ONNX run by onnxruntime on the COCO dev set, and its metrics."""

import argparse
import json
import subprocess
import sys

import pytest

from dipr.core.coco import DEV_DATA_VARIABLE, dev_data, load_keypoint_set
from dipr.evaluation import cli as eval_cli
from dipr.evaluation import coco_eval
from dipr.evaluation.cli import DEFAULT_ONNX

DEV_DATA = dev_data()
ANNOTATIONS = DEV_DATA / "test_coco.json"
needs_data = pytest.mark.skipif(
    not ANNOTATIONS.is_file(), reason=f"COCO dev set not found at {DEV_DATA}"
)


def dipr_eval(*argv: str) -> int:
    """`dipr eval ARGV` in-process (the subprocess test goes through the real `dipr.cli`)."""
    parser = argparse.ArgumentParser(prog="dipr")
    eval_cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", *argv])
    return args.run(args)


# --- the real thing: committed ONNX, real dev data -----------------------------------------------


@pytest.fixture(scope="module")
def rows() -> dict[str, coco_eval.Row]:
    dataset = load_keypoint_set(ANNOTATIONS, DEV_DATA)
    return {row.method: row for row in coco_eval.evaluate_model(DEFAULT_ONNX, dataset)}


@needs_data
def test_eval_gives_all_three_methods_with_sane_metrics(rows):
    assert set(rows) == {"official", "raw", "debiased"}
    for row in rows.values():
        m = row.accuracy
        assert m.oks_persons == 12
        for value in (m.mean_oks, m.ap, m.ap50, m.ap75):
            assert 0.0 <= value <= 1.0, row
        assert 0.0 < m.mean_px_error < 50.0, row


@needs_data
def test_crop_model_inverse_path_is_right(rows):
    # REFERENCE: the official decode scores 0.836 mean OKS on coco_dev; a wrong affine, axis
    # swap or stride mix-up drops it far below.
    assert rows["official"].accuracy.mean_oks > 0.75
    assert rows["debiased"].accuracy.mean_oks > 0.75
    assert rows["official"].accuracy.mean_px_error < 15.0


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
    assert dipr_eval("--annotations", str(annotations), "--images", str(DEV_DATA)) == 1
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
    onnx.save(
        helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", 18)],
            ir_version=10,  # what onnxruntime 1.31 reads (the onnx package writes newer)
        ),
        path,
    )
    assert dipr_eval("--model", str(path)) == 1
    err = capsys.readouterr().err
    assert "contract" in err and "keypoints_raw" in err


@needs_data
def test_missing_model_is_a_clear_error(tmp_path, capsys):
    assert dipr_eval("--model", str(tmp_path / "nope.onnx")) == 1
    assert "model not found" in capsys.readouterr().err


def test_the_dev_data_comes_from_the_environment_first(monkeypatch, tmp_path):
    monkeypatch.setenv(DEV_DATA_VARIABLE, str(tmp_path))
    assert dev_data() == tmp_path
    monkeypatch.delenv(DEV_DATA_VARIABLE)
    assert dev_data().parts[-3:] == ("shared", "data", "coco_dev")
