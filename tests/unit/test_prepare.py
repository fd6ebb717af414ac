"""dipr.core.prepare: one image's bytes and boxes → network inputs and crops, with JPEGs decoded
at 1/2, 1/4 or 1/8 of their size when every crop samples them that coarsely."""

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from dipr.core.errors import InvalidInput
from dipr.core.images import ImageHeader, decode, read_header
from dipr.core.prepare import prepare_image
from dipr.models.registry import DEFAULT_ONNX
from tests.helpers.image_files import blobs_jpeg, centroid
from tests.helpers.jpeg_bytes import exif_app1
from tests.helpers.paths import PHOTOS

INPUT = (256, 256)


@pytest.mark.parametrize(
    ("header", "at_most", "expected"),
    [
        (ImageHeader("jpeg", 640, 480), 8.0, 8),
        (ImageHeader("jpeg", 640, 480), 7.9, 4),
        (ImageHeader("jpeg", 640, 480), 2.0, 2),
        (ImageHeader("jpeg", 640, 480), 1.99, 1),
        (ImageHeader("jpeg", 640, 480), 0.0, 1),
        (ImageHeader("jpeg", 100, 50), 8.0, 2),  # 4 does not divide 50
        (ImageHeader("jpeg", 640, 425), 8.0, 1),  # odd height: no exact reduced grid
        (ImageHeader("png", 640, 480), 8.0, 1),  # only libjpeg decodes at a reduced scale
        (ImageHeader("webp", 640, 480), 8.0, 1),
    ],
)
def test_largest_reduction(header, at_most, expected):
    assert header.largest_reduction(at_most) == expected


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_reduced_pixel_r_is_centred_on_image_pixel_f_r_plus_half_f_minus_one(factor):
    centres = [(100.3, 200.7), (333.1, 97.2), (500.6, 400.4)]
    data = blobs_jpeg(640, 480, centres, sigma=12)
    decoded = decode(data, read_header(data, None, 10**8), factor)
    assert decoded.reduction == factor
    rgb = decoded.pixels
    assert rgb.shape == (480 // factor, 640 // factor, 3)
    for x, y in centres:
        expected = ((x - (factor - 1) / 2) / factor, (y - (factor - 1) / 2) / factor)
        found = centroid(rgb[..., 0], expected, 40 / factor)
        assert found == pytest.approx(expected, abs=0.02)


def test_the_decode_takes_the_coarsest_reduction_the_header_allows():
    data = blobs_jpeg(100, 50, [(50, 25)], sigma=5)
    decoded = decode(data, read_header(data, None, 10**8), at_most_reduction=4)
    assert decoded.reduction == 2  # 4 does not divide 50
    assert decoded.pixels.shape == (25, 50, 3)
    assert (decoded.width, decoded.height) == (100, 50)


def test_reduced_and_full_decode_give_the_same_inputs():
    """Boxes at several scales in one 2048×1536 JPEG: the decode is reduced as far as the finest
    crop allows, and every input matches the full-size decode's (blobs at the same place)."""
    centres = [(400.2, 500.6), (1500.7, 900.3)]
    data = blobs_jpeg(2048, 1536, centres, sigma=20)
    boxes = [(100.0, 100.0, 900.0, 1100.0), (1000.0, 300.0, 2000.0, 1500.0)]
    reduced = prepare_image(data, None, boxes, INPUT, padding=1.25, max_pixels=10**8)
    full = prepare_image(data, None, boxes, INPUT, padding=1.25, max_pixels=10**8, reduced=False)
    # Finest crop: a 1000 px box padded to 1250 → 0.2048 input px per image px → 1/4.
    assert (reduced.decoded.reduction, full.decoded.reduction) == (4, 1)
    assert (reduced.decoded.width, reduced.decoded.height) == (2048, 1536)
    assert (full.decoded.width, full.decoded.height) == (2048, 1536)
    for i, (x, y) in enumerate(centres[:2]):
        crop = full.cropped.crops[i]
        at = crop.matrix @ np.array([x, y, 1.0])  # where the blob must land in the input
        for prepared in (reduced, full):
            found = centroid(prepared.cropped.inputs[i, ..., 0], tuple(at), 30)
            assert found == pytest.approx(tuple(at), abs=0.05)
    difference = np.abs(reduced.cropped.inputs.astype(int) - full.cropped.inputs.astype(int))
    assert difference.mean() < 0.5


def test_no_reduction_when_a_crop_needs_the_detail_or_none_is_wanted():
    data = blobs_jpeg(1024, 1024, [(512, 512)], sigma=20)

    def reduction(boxes, **options):
        prepared = prepare_image(
            data, None, boxes, INPUT, padding=1.25, max_pixels=10**8, **options
        )
        return prepared.decoded.reduction

    assert reduction(None) == 4  # the whole frame: 0.25 input px per image px
    assert reduction([(0.0, 0.0, 820.0, 820.0)]) == 4  # padded to 1025 px: 0.2498
    assert reduction([(0.0, 0.0, 800.0, 800.0)]) == 2  # padded to 1000 px: 0.256 needs 1/2
    boxes = [(0.0, 0.0, 820.0, 820.0), (400.0, 400.0, 500.0, 500.0)]
    assert reduction(boxes) == 1  # a 125 px crop needs every pixel
    assert reduction(None, reduced=False) == 1
    png = cv2.imencode(".png", np.zeros((1024, 1024, 3), np.uint8))[1].tobytes()
    prepared = prepare_image(png, None, None, INPUT, padding=1.25, max_pixels=10**8)
    assert prepared.decoded.reduction == 1


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_with_reduced_decode(orientation):
    """Orientations 6 and 8 swap the axes after decoding: the whole frame is still found, at the
    displayed size, and the reduced input matches the full one."""
    jpeg = blobs_jpeg(1024, 640, [(300.5, 200.5), (800.2, 500.8)], sigma=15)
    data = jpeg[:2] + exif_app1(orientation) + jpeg[2:]
    reduced = prepare_image(data, None, None, INPUT, padding=1.25, max_pixels=10**8)
    full = prepare_image(data, None, None, INPUT, padding=1.25, max_pixels=10**8, reduced=False)
    swapped = orientation in (5, 6, 7, 8)
    size = (reduced.decoded.width, reduced.decoded.height)
    assert size == ((640, 1024) if swapped else (1024, 640))
    assert reduced.decoded.reduction == 4  # 1024 px on the long side → 0.25
    difference = reduced.cropped.inputs.astype(int) - full.cropped.inputs.astype(int)
    assert np.abs(difference).mean() < 0.5


def test_boxes_are_still_checked_against_the_full_size():
    data = blobs_jpeg(1024, 1024, [(512, 512)], sigma=20)
    with pytest.raises(InvalidInput, match="outside"):
        prepare_image(
            data, None, [(1100.0, 0.0, 1200.0, 900.0)], INPUT, padding=1.25, max_pixels=10**8
        )
    with pytest.raises(InvalidInput, match="non-finite"):
        prepare_image(
            data, None, [(0.0, 0.0, float("nan"), 900.0)], INPUT, padding=1.25, max_pixels=10**8
        )


@pytest.mark.parametrize("photo", ["astronaut.jpg", "camera.jpg"])
def test_reduced_decode_barely_moves_the_default_models_keypoints(photo):
    """A real photo (512×512: decoded at 1/2 for the whole frame) through the default model:
    confident keypoints move by under 2 px, 0.4 % of the image side, between the two decodes."""
    session = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    data = (PHOTOS / photo).read_bytes()
    points, reductions = [], []
    for reduced in (True, False):
        prepared = prepare_image(
            data, None, None, INPUT, padding=1.25, max_pixels=10**8, reduced=reduced
        )
        inputs, crop = prepared.cropped.inputs, prepared.cropped.crops[0]
        keypoints, scores = session.run(["keypoints", "scores"], {"image": inputs})
        points.append((crop.to_image(keypoints[0].astype(np.float64)), scores[0]))
        reductions.append(prepared.decoded.reduction)
    (reduced, scores), (full, _) = points
    assert reductions == [2, 1]
    confident = scores > 0.5
    assert confident.sum() >= 5
    moved = np.linalg.norm(reduced - full, axis=-1)[confident]
    assert moved.max() < 2.0
    assert moved.mean() < 0.5
