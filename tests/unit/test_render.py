"""Drawing poses: boxes, limbs between visible joints, joints, at the right places."""

import math

import cv2
import numpy as np
import pytest

from dipr.service.pipeline import ImagePoses, PersonPose
from dipr.service.render import BOX_COLOUR, JOINT_COLOUR, LIMB_COLOUR, VISIBLE, render_jpeg

SKELETON = ((0, 1), (1, 2))
# A 600×480 canvas: lines are 2 px wide, wide enough to keep their colour through JPEG.
WIDTH, HEIGHT = 600, 480
BOX = (60.0, 60.0, 540.0, 420.0)
ROW = [(180.0, 240.0), (300.0, 240.0), (420.0, 240.0)]


def pose(points: list[tuple[float, float]], scores: list[float], box=BOX) -> PersonPose:
    keypoints = np.array(points, np.float64)
    return PersonPose(
        box=tuple(float(v) for v in box),  # type: ignore[arg-type]
        score=float(np.mean(scores)),
        keypoints=keypoints,
        keypoints_raw=keypoints,
        scores=np.array(scores, np.float32),
    )


def drawn(persons: list[PersonPose], width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    poses = ImagePoses(width, height, persons, np.zeros((height, width, 3), np.uint8))
    jpeg = render_jpeg(poses, SKELETON, quality=100)
    assert jpeg[:3] == b"\xff\xd8\xff"
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def near(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(pixel.astype(int) - colour).max() <= 60)


def test_box_limbs_and_joints_are_drawn_where_they_are():
    image = drawn([pose(ROW, [0.9, 0.9, 0.9])])
    assert near(image[60, 300], BOX_COLOUR)  # top edge of the box
    assert near(image[240, 60], BOX_COLOUR)  # left edge
    assert near(image[240, 180], JOINT_COLOUR)  # joints drawn over the limbs
    assert near(image[240, 240], LIMB_COLOUR)  # between joints 0 and 1
    assert near(image[240, 360], LIMB_COLOUR)
    assert image[150, 300].max() < 40  # inside the box, away from the pose: untouched


def test_joints_below_the_visibility_threshold_are_left_out_with_their_limbs():
    image = drawn([pose(ROW, [0.9, VISIBLE - 0.01, 0.9])])
    assert near(image[240, 180], JOINT_COLOUR) and near(image[240, 420], JOINT_COLOUR)
    for x in (240, 300, 360):  # no joint 1, so neither limb
        assert image[240, x].max() < 40


def test_coordinates_off_the_canvas_or_nan_do_not_break_drawing():
    wild = [(1e12, -1e12), (math.nan, 5.0), (math.inf, 3.0)]
    image = drawn([pose(wild, [0.9, 0.9, 0.9], box=(-1e15, 0.0, 1e15, 5.0))])
    assert image.shape == (HEIGHT, WIDTH, 3)


def line_width(image: np.ndarray, x: int, y: int) -> int:
    """How many rows around (x, y) carry the limb colour."""
    return sum(near(image[row, x], LIMB_COLOUR) for row in range(y - 20, y + 20))


def test_line_widths_grow_with_the_image():
    small = drawn([pose(ROW, [0.9] * 3)])
    scaled = [(3 * x, 3 * y) for x, y in ROW]
    box = tuple(3 * v for v in BOX)
    big = drawn([pose(scaled, [0.9] * 3, box=box)], width=3 * WIDTH, height=3 * HEIGHT)
    assert line_width(big, 720, 720) > line_width(small, 240, 240) >= 2


def test_drawing_needs_the_pixels():
    with pytest.raises(ValueError, match="decoded image"):
        render_jpeg(ImagePoses(10, 10, [], None), SKELETON)
