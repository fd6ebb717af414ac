"""dipr.core.detection: the letterbox, and a detector's candidates back in image pixels (with
made-up detector outputs; the real detector is tested in test_multipose_port and the service
tests)."""

import math

import numpy as np
import pytest

from dipr.core import detector_contract
from dipr.core.crops import crop_for_box
from dipr.core.detection import (
    KEYPOINT_EXTENT_MIN,
    box_to_image,
    clip_box,
    keypoint_extent,
    letterbox,
    persons_in,
)
from dipr.core.images import DecodedImage

INPUT = (256, 256)


def outputs(boxes, scores, keypoints=None, keypoint_scores=None) -> dict[str, np.ndarray]:
    count = len(scores)
    return {
        detector_contract.BOXES: np.array(boxes, np.float32).reshape(count, 4),
        detector_contract.BOX_SCORES: np.array(scores, np.float32),
        detector_contract.KEYPOINTS: np.zeros((count, 17, 2), np.float32)
        if keypoints is None
        else np.array(keypoints, np.float32),
        detector_contract.KEYPOINT_SCORES: np.full((count, 17), 0.5, np.float32)
        if keypoint_scores is None
        else np.array(keypoint_scores, np.float32),
    }


def test_the_letterbox_is_the_whole_picture_scaled_and_centred():
    pixels = np.full((100, 200, 3), 255, np.uint8)  # 200 wide, 100 high
    boxed = letterbox(DecodedImage(pixels, 1), INPUT)
    (crop,) = boxed.crops
    assert crop.matrix[0, 0] == pytest.approx(256 / 200)  # the long side fills the input
    inputs = boxed.inputs[0]
    assert inputs.shape == (256, 256, 3)
    assert inputs[:60].max() == 0 and inputs[-60:].max() == 0  # zero above and below
    # The picture across the middle (the outermost columns blend with the zero beyond it).
    assert inputs[128, 1:-1].min() == 255
    assert boxed.boxes == [(0.0, 0.0, 200.0, 100.0)]


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (256, 256), (1000, 100)])
def test_a_box_of_the_whole_input_region_maps_back_to_the_picture(size):
    width, height = size
    crop = crop_for_box((0.0, 0.0, float(width), float(height)), INPUT, 1.0)
    scale = min(256 / width, 256 / height)
    # The picture's region of the input, in input edge coordinates.
    left, top = 128 - width * scale / 2, 128 - height * scale / 2
    box = np.array([left, top, left + width * scale, top + height * scale])
    assert box_to_image(crop, box) == pytest.approx((0.0, 0.0, width, height), abs=1e-9)


def test_persons_are_the_candidates_above_the_threshold_best_first_clipped_to_the_picture():
    crop = crop_for_box((0.0, 0.0, 256.0, 256.0), INPUT, 1.0)  # identity
    found = persons_in(
        outputs(
            [[10, 10, 50, 90], [100, 20, 300, 200], [0, 0, 5, 5], [60, 60, 80, 80]],
            [0.3, 0.9, 0.1, math.nan],
        ),
        crop,
        (256, 256),
        min_score=0.2,
    )
    assert [p.score for p in found] == pytest.approx([0.9, 0.3])
    assert found[0].box == pytest.approx((100.0, 20.0, 256.0, 200.0))  # clipped at the right
    assert found[1].box == pytest.approx((10.0, 10.0, 50.0, 90.0))


def test_a_candidate_in_the_letterbox_padding_is_no_person():
    crop = crop_for_box((0.0, 0.0, 256.0, 128.0), INPUT, 1.0)  # the picture fills rows 64..192
    candidates = outputs([[10, 0, 50, 40], [10, 70, 50, 120]], [0.9, 0.8])
    found = persons_in(candidates, crop, (256, 128), 0.5)
    assert len(found) == 1 and found[0].box == pytest.approx((10.0, 6.0, 50.0, 56.0))


def test_keypoints_come_back_through_the_letterbox():
    crop = crop_for_box((0.0, 0.0, 512.0, 512.0), INPUT, 1.0)  # scale 1/2
    keypoints = np.full((1, 17, 2), 127.5, np.float32)  # the input's centre
    (person,) = persons_in(outputs([[0, 0, 256, 256]], [0.9], keypoints), crop, (512, 512), 0.5)
    np.testing.assert_allclose(person.keypoints, 255.5, atol=1e-9)  # the picture's centre
    assert person.box == pytest.approx((0.0, 0.0, 512.0, 512.0))


def test_the_keypoint_extent_box_uses_confident_keypoints_only():
    keypoints = np.array([[10.0, 20.0], [30.0, 60.0], [20.0, 40.0], [500.0, 500.0]])
    scores = np.array([0.9, 0.8, 0.5, 0.1])
    assert keypoint_extent(keypoints, scores) == (9.5, 19.5, 30.5, 60.5)
    too_few = KEYPOINT_EXTENT_MIN - 1
    assert keypoint_extent(keypoints[:too_few], scores[:too_few]) is None


def test_cropping_by_keypoints_falls_back_to_the_box_with_too_few_of_them():
    crop = crop_for_box((0.0, 0.0, 256.0, 256.0), INPUT, 1.0)
    keypoints = np.zeros((2, 17, 2), np.float32)
    keypoints[0, :, 0], keypoints[0, :, 1] = np.linspace(40, 60, 17), np.linspace(50, 150, 17)
    keypoint_scores = np.zeros((2, 17), np.float32)
    keypoint_scores[0] = 0.9  # the first confident everywhere, the second nowhere
    found = persons_in(
        outputs([[30, 30, 90, 200], [100, 100, 150, 150]], [0.9, 0.8], keypoints, keypoint_scores),
        crop,
        (256, 256),
        0.5,
        box_source="keypoints",
    )
    assert found[0].box == pytest.approx((39.5, 49.5, 60.5, 150.5))
    assert found[1].box == pytest.approx((100.0, 100.0, 150.0, 150.0))


def test_clip_box():
    assert clip_box((-5.0, 10.0, 300.0, 50.0), (256, 128)) == (0.0, 10.0, 256.0, 50.0)
