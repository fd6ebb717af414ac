"""dipr.core.crops: the crop affine, its inverse, the box checks, and warps from reduced decodes."""

import math

import numpy as np
import pytest

from dipr.core.crops import (
    PADDING,
    Crop,
    check_box_placement,
    check_box_shape,
    crop_for_box,
    crop_scale,
    warp,
)
from dipr.core.errors import InvalidInput
from dipr.core.images import decode, read_header
from dipr.core.prepare import crop_boxes
from tests.helpers.image_files import ORIENTATIONS, blobs, centroid, gray_jpeg
from tests.helpers.jpeg_bytes import exif_app1

# The documented padding (README, SimpleBaseline, MMPose): service, `dipr eval` and `dipr train`
# all crop with it, so a change here is a change of what every model sees.
DOCUMENTED_PADDING = 1.25


def test_the_padding_is_the_documented_one():
    assert PADDING == DOCUMENTED_PADDING
    # A 200×400 box into a 192×256 input: the padded height (500 px) fills the input's height.
    box = (100.0, 50.0, 300.0, 450.0)
    assert crop_scale(box, (192, 256)) == pytest.approx(256 / 500)
    crop = crop_for_box(box, (192, 256))
    top, bottom = crop.to_image(np.array([[95.5, -0.5], [95.5, 255.5]]))  # input edges, x centred
    assert bottom[1] - top[1] == pytest.approx(400 * DOCUMENTED_PADDING)
    assert (top[1] + bottom[1]) / 2 == pytest.approx(250.0 - 0.5)  # the box centre, as an index


@pytest.mark.parametrize("input_size", [(256, 256), (192, 256), (288, 384)])
@pytest.mark.parametrize("padding", [1.0, 1.25, 1.6])
def test_inverse_round_trips(input_size, padding):
    rng = np.random.default_rng(7)
    for _ in range(20):
        x1, y1 = rng.uniform(-50, 500, 2)
        box = (x1, y1, x1 + rng.uniform(5, 800), y1 + rng.uniform(5, 800))
        crop = crop_for_box(box, input_size, padding)
        points = rng.uniform(-100, 1000, (17, 2))
        in_input = points @ crop.matrix[:, :2].T + crop.matrix[:, 2]
        np.testing.assert_allclose(crop.to_image(in_input), points, atol=1e-9)
        np.testing.assert_allclose(crop.matrix @ np.append(crop.inverse[:, 2], 1), 0, atol=1e-9)


@pytest.mark.parametrize("input_size", [(256, 256), (192, 256)])
def test_the_box_centre_lands_on_the_input_centre_without_distortion(input_size):
    box = (10.0, 20.0, 110.0, 320.0)
    crop = crop_for_box(box, input_size)
    width, height = input_size
    centre = crop.to_image(np.array([(width - 1) / 2, (height - 1) / 2]))
    assert centre == pytest.approx([(10 + 110) / 2 - 0.5, (20 + 320) / 2 - 0.5])
    assert crop.matrix[0, 0] == crop.matrix[1, 1]  # one scale on both axes
    assert crop.matrix[0, 1] == crop.matrix[1, 0] == 0


def test_a_whole_image_box_unpadded_is_the_identity_at_the_same_size():
    crop = crop_for_box((0.0, 0.0, 256.0, 256.0), (256, 256), padding=1.0)
    np.testing.assert_allclose(crop.matrix, np.eye(2, 3), atol=1e-12)
    np.testing.assert_allclose(crop.inverse, np.eye(2, 3), atol=1e-12)


def test_from_matrix_inverts():
    matrix = np.array([[0.5, 0.1, 3.0], [-0.2, 0.7, -4.0]])
    crop = Crop.from_matrix(matrix)
    points = np.array([[1.0, 2.0], [30.0, -5.0]])
    np.testing.assert_allclose(crop.to_image(points @ matrix[:, :2].T + matrix[:, 2]), points)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((0.0, 0.0, math.nan, 10.0), "non-finite"),
        ((0.0, -math.inf, 10.0, 10.0), "non-finite"),
        ((10.0, 0.0, 10.0, 10.0), "no area"),
        ((0.0, 10.0, 10.0, 5.0), "no area"),
    ],
)
def test_box_shape_is_checked_before_the_image_is_known(box, message):
    with pytest.raises(InvalidInput, match=message):
        check_box_shape(box)


def test_a_box_that_would_be_one_as_coco_x_y_width_height_gets_the_hint():
    with pytest.raises(InvalidInput) as refused:
        check_box_shape((100.0, 50.0, 30.0, 80.0))  # x2 < x1: as [x, y, w, h], a 30×80 box
    assert refused.value.message == (
        "box [100, 50, 30, 80] has no area: need x2 > x1 and y2 > y1; boxes are [x1, y1, x2, y2] "
        "corners, not COCO [x, y, width, height]: if this one is [x, y, width, height], send "
        "[100, 50, 130, 130]"
    )
    with pytest.raises(InvalidInput, match=r"send \[10\.5, 20, 15\.5, 60\]$"):
        check_box_shape((10.5, 20.0, 5.0, 40.0))


@pytest.mark.parametrize(
    "box",
    [
        (0.0, 10.0, 10.0, 0.0),  # y2 = 0: no height either way
        (10.0, 10.0, -5.0, 20.0),  # negative as a width too
    ],
)
def test_a_box_that_is_no_box_either_way_gets_no_coco_hint(box):
    with pytest.raises(InvalidInput, match="no area") as refused:
        check_box_shape(box)
    assert "COCO" not in refused.value.message


def test_a_coco_box_with_width_above_x_is_a_valid_box_and_cannot_be_told():
    """[x, y, w, h] = [10, 20, 200, 300] is also the corners box [10, 20] – [200, 300]: accepted."""
    check_box_shape((10.0, 20.0, 200.0, 300.0))


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ((100.0, 0.0, 120.0, 10.0), "outside"),  # right of a 100-wide image
        ((-20.0, -20.0, 0.0, 0.0), "outside"),  # touches only the corner's edges
        ((0.0, 0.0, 10.0, 1e-4), "too large or too small"),
        ((-1e6, 0.0, 10.0, 10.0), "too large or too small"),
    ],
)
def test_box_placement_is_checked_against_the_image(box, message):
    with pytest.raises(InvalidInput, match=message):
        check_box_placement(box, 100, 80)


def test_a_box_overlapping_the_image_partly_is_fine():
    check_box_placement((-50.0, -50.0, 10.0, 10.0), 100, 80)
    check_box_placement((90.0, 70.0, 400.0, 300.0), 100, 80)


def stored_for_display(displayed: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels whose EXIF orientation `orientation` displays as `displayed`."""
    inverse = {6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1)}  # the rest: involutions
    stored = inverse.get(orientation, ORIENTATIONS[orientation])(displayed)
    assert np.array_equal(ORIENTATIONS[orientation](stored), displayed)
    return np.ascontiguousarray(stored)


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_keypoints_come_back_to_displayed_pixels_whatever_orientation_and_decode_scale(
    orientation, factor
):
    """Blobs at known places of the displayed picture, stored under each EXIF orientation and
    decoded at 1/factor: found in the crop, they map back through the inverse affine to where they
    are displayed."""
    width, height = 1024, 640  # displayed; every factor divides both
    centres = [(300.3, 200.6), (700.8, 450.2)]
    data = gray_jpeg(stored_for_display(blobs(width, height, centres, sigma=24), orientation))
    data = data[:2] + exif_app1(orientation) + data[2:]
    decoded = decode(data, read_header(data, "image/jpeg", 10**8), at_most_reduction=factor)
    assert decoded.reduction == factor
    assert (decoded.width, decoded.height) == (width, height)
    boxes = [(x - 200, y - 200, x + 200, y + 200) for x, y in centres]
    cropped = crop_boxes(decoded, boxes, (256, 256))
    for (x, y), crop, pixels in zip(centres, cropped.crops, cropped.inputs, strict=True):
        expected = crop.matrix @ np.array([x, y, 1.0])
        found = np.array(centroid(pixels[..., 0], tuple(expected), 60))
        assert crop.to_image(found) == pytest.approx([x, y], abs=0.1 * factor + 0.1)


def test_warp_from_a_reduced_decode_matches_the_full_one():
    gray = blobs(512, 384, [(200.5, 150.5)], sigma=30)
    data = gray_jpeg(gray)
    header = read_header(data, None, 10**8)
    crop = crop_for_box((100.0, 50.0, 300.0, 250.0), (64, 64))  # 0.2 input px per image px
    full = warp(decode(data, header), crop, (64, 64)).astype(int)
    reduced = warp(decode(data, header, 4), crop, (64, 64)).astype(int)
    assert np.abs(full - reduced).mean() < 1.0
