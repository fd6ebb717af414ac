"""The accuracy measures of `dipr eval`: OKS as COCOeval computes it, and the coordinate
convention between our pixel indices and COCO's continuous coordinates (no data, no model)."""

import math

import numpy as np
import pytest

from dipr.core.crops import Crop, crop_for_box
from dipr.evaluation import coco_eval


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
