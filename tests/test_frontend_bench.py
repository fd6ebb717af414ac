"""`dipr bench --frontend --quick`: the null model follows the pose contract, and the front end's
table comes out with sane figures. (A smoke run: the goal, ratio ≤ 1.5, is judged by `make
bench`, not here.)"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dipr.benchmarks.null_model import reference_info, write_null_model
from dipr.cli import main as dipr
from dipr.core import pose_contract
from dipr.models.registry import DEFAULT_ONNX


def test_the_null_model_has_the_shipped_models_contract(tmp_path: Path) -> None:
    shipped = reference_info(DEFAULT_ONNX)
    null = reference_info(write_null_model(DEFAULT_ONNX, tmp_path / "null.onnx"))
    assert null.name == "null-" + shipped.name
    assert null.outputs == shipped.outputs and null.input_size == shipped.input_size
    assert {**null.metadata, pose_contract.NAME: shipped.name} == shipped.metadata
    session = ort.InferenceSession(str(tmp_path / "null.onnx"), providers=["CPUExecutionProvider"])
    width, height = shipped.input_size
    images = np.random.default_rng(0).integers(0, 256, (3, height, width, 3), np.uint8)
    outputs = dict(zip(null.outputs, session.run(None, {pose_contract.INPUT: images}), strict=True))
    keypoints = len(shipped.keypoint_names)
    assert outputs[pose_contract.SCORES].shape == (3, keypoints)
    assert outputs[pose_contract.KEYPOINTS].shape == (3, keypoints, 2)
    assert all(v.dtype == np.float32 for v in outputs.values())
    # Derived from the input: a real graph, not constants.
    expected = images[:, :keypoints, :2, 0].astype(np.float32)
    assert np.array_equal(outputs[pose_contract.KEYPOINTS], expected)
    scores = outputs[pose_contract.SCORES]
    assert np.allclose(scores, expected.max(axis=2) / 255)
    assert 0 <= scores.min() <= scores.max() <= 1


@pytest.mark.skipif(shutil.which("hey") is None, reason="hey (Debian package hey) is not installed")
def test_quick_frontend_bench_writes_its_table(tmp_path: Path) -> None:
    assert dipr(["bench", "--frontend", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "frontend.json").read_text())
    points = {(p["request"], p["layout"], p["processes"]): p for p in report["points"]}
    # Both layouts of several processes, with 1 and 2 of them, in the same run.
    assert set(points) == {
        (request, layout, processes)
        for request in ("box", "no box")
        for layout in ("workers", "frontends")
        for processes in (1, 2)
    }
    for point in points.values():
        assert point["errors"] == 0 and point["requests"] > 0 and point["requests_per_s"] > 0
        # Decode + warp of a 512×512 JPEG: well under 50 ms of CPU, more than 0.05.
        assert 0.05 < point["floor_ms"] < 50
        # The server decodes and warps too: it cannot spend much less than the floor, and no
        # request costs a second of CPU.
        assert 0.5 * point["floor_ms"] < point["cpu_ms_per_request"] < 1000
        assert point["ratio"] == pytest.approx(point["cpu_ms_per_request"] / point["floor_ms"])
    # The same photo and box for every server: one floor per request kind.
    assert len({p["floor_ms"] for p in points.values() if p["request"] == "box"}) == 1
    table = (tmp_path / "frontend.md").read_text()
    rows = [
        line
        for line in table.splitlines()
        if re.match(r"\| (box|no box) \| (workers|frontends) \| [12] \|", line)
    ]
    assert len(rows) == 8
    for row in rows:
        request, layout, processes, *figures = [cell.strip() for cell in row.strip("|").split("|")]
        point = points[(request, layout, int(processes))]
        assert [float(v) for v in figures] == pytest.approx(
            [
                point["floor_ms"],
                point["cpu_ms_per_request"],
                point["ratio"],
                point["requests_per_s"],
                point["p50_ms"],
            ],
            abs=0.051,
        )
    # How throughput grows with processes, per layout and request.
    assert "frontends 2 vs 1, box: ×" in table and "workers 2 vs 1, box: ×" in table
