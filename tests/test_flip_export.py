"""`dipr export --flip-test`: the exported graph runs each crop and its mirror, and ONNX Runtime
gives mirrored keypoints for a mirrored photo (the left and right channels swapped back)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dipr.cli import main as dipr
from dipr.core import pose_contract
from dipr.core.keypoints import flip_permutation
from dipr.core.pose_contract import describe
from dipr.export.cli import DEFAULT_PARITY_IMAGES
from dipr.export.onnx_export import load_parity_images


@pytest.fixture(scope="module")
def flip_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flip") / "thunder-flip.onnx"
    assert dipr(["export", "--flip-test", "--output", str(path)]) == 0  # with the parity check
    return path


def test_the_metadata_says_flip_test(flip_onnx: Path) -> None:
    session = ort.InferenceSession(str(flip_onnx), providers=["CPUExecutionProvider"])
    info = describe(session)
    assert info.flip_test and info.metadata[pose_contract.FLIP_TEST] == "true"
    assert info.description.endswith(" flip")
    assert {p.key: p.value for p in onnx.load(flip_onnx).metadata_props}["precision"] == "fp32"


def test_a_mirrored_photo_gives_mirrored_keypoints(flip_onnx: Path) -> None:
    session = ort.InferenceSession(str(flip_onnx), providers=["CPUExecutionProvider"])
    photos = load_parity_images(DEFAULT_PARITY_IMAGES, 256, 3)
    mirrors = np.ascontiguousarray(photos[:, :, ::-1])
    names = [pose_contract.KEYPOINTS, pose_contract.SCORES]
    keypoints, scores = session.run(names, {pose_contract.INPUT: photos})
    mirror_keypoints, mirror_scores = session.run(names, {pose_contract.INPUT: mirrors})
    swapped = list(flip_permutation())
    back = mirror_keypoints[:, swapped].copy()
    back[..., 0] = 255 - back[..., 0]
    assert np.abs(keypoints - back).max() < 1e-3
    assert np.allclose(scores, mirror_scores[:, swapped], atol=1e-6)
    # A real check: the photos' own keypoints are not symmetric, so swapping nothing would fail.
    unswapped = mirror_keypoints.copy()
    unswapped[..., 0] = 255 - unswapped[..., 0]
    assert np.abs(keypoints - unswapped).max() > 5.0
