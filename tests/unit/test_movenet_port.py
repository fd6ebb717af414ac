"""The PyTorch port of MoveNet against the original TFJS graph run in Node (golden fixtures)."""

from functools import cache

import cv2
import numpy as np
import pytest
import torch

from dipr.models.movenet.decode import maps_of, official_decode
from dipr.models.movenet.network import MoveNet
from dipr.models.movenet.weights import load_movenet
from tests.helpers.paths import GOLDEN

CASES = [
    (variant, photo)
    for variant in ("thunder", "lightning")
    for photo in ("astronaut", "grace_hopper", "camera")
]


@cache
def network(variant: str) -> MoveNet:
    return load_movenet(variant)


def run_case(variant: str, photo: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    model = network(variant)
    bgr = cv2.imread(str(GOLDEN / f"{variant}_{photo}_input.png"))
    pixels = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        heads = model(pixels)
        decoded = official_decode(model, maps_of(heads))
    ours = {
        "heatmap": decoded.heatmaps.permute(0, 2, 3, 1).numpy(),
        "center": torch.sigmoid(heads.center_logits).permute(0, 2, 3, 1).numpy(),
        # The published output is (y, x, score), normalised.
        "keypoints": torch.cat([decoded.normalized.flip(2), decoded.scores[..., None]], 2).numpy(),
    }
    golden = dict(np.load(GOLDEN / f"{variant}_{photo}.npz", allow_pickle=False))
    return ours, golden


@pytest.mark.parametrize(("variant", "photo"), CASES)
def test_heatmaps_match_tfjs(variant: str, photo: str) -> None:
    ours, golden = run_case(variant, photo)
    assert ours["heatmap"].shape == golden["heatmap"].shape
    assert np.abs(ours["heatmap"] - golden["heatmap"]).max() <= 1e-4
    assert np.abs(ours["center"] - golden["center"]).max() <= 1e-4


@pytest.mark.parametrize(("variant", "photo"), CASES)
def test_official_decode_matches_tfjs_identity(variant: str, photo: str) -> None:
    ours, golden = run_case(variant, photo)
    # golden keypoints: [1, 1, 17, 3]
    assert np.abs(ours["keypoints"][0] - golden["keypoints"][0, 0]).max() <= 1e-3


def test_fixtures_are_real_detections() -> None:
    """Guards against comparing two empty outputs: the astronaut's face is found confidently."""
    _, golden = run_case("thunder", "astronaut")
    face_scores = golden["keypoints"][0, 0, :5, 2]
    assert face_scores.min() > 0.5
