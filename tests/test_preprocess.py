"""prepare_image: one image's bytes and boxes → network inputs and crops, with JPEGs decoded at
1/2, 1/4 or 1/8 of their size when every crop samples them that coarsely."""

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from jpeg_bytes import exif_app1

from dipr.service.errors import InvalidRequest
from dipr.service.images import ImageHeader, decode_pixels, read_header
from dipr.service.preprocess import prepare_image
from dipr.service.settings import DEFAULT_MODEL

INPUT = (256, 256)
PHOTOS = Path(__file__).parent / "fixtures" / "photos"


def blobs_jpeg(width: int, height: int, centres: list[tuple[float, float]], sigma: float) -> bytes:
    """White Gaussian blobs on black, at sub-pixel centres (x, y) in pixel indices."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in centres)
    gray = np.clip(255 * image, 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", cv2.merge([gray] * 3), [cv2.IMWRITE_JPEG_QUALITY, 98])
    assert ok
    return data.tobytes()


def centroid(gray: np.ndarray, near: tuple[float, float], radius: float) -> tuple[float, float]:
    ys, xs = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    weights = gray.astype(np.float64) * (
        (abs(xs - near[0]) < radius) & (abs(ys - near[1]) < radius)
    )
    return float((weights * xs).sum() / weights.sum()), float((weights * ys).sum() / weights.sum())


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
    rgb = decode_pixels(data, read_header(data, None, 10**8), factor)
    assert rgb.shape == (480 // factor, 640 // factor, 3)
    for x, y in centres:
        expected = ((x - (factor - 1) / 2) / factor, (y - (factor - 1) / 2) / factor)
        found = centroid(rgb[..., 0], expected, 40 / factor)
        assert found == pytest.approx(expected, abs=0.02)


def test_a_reduction_the_header_does_not_allow_is_refused():
    data = blobs_jpeg(100, 50, [(50, 25)], sigma=5)
    with pytest.raises(ValueError, match="1/4"):
        decode_pixels(data, read_header(data, None, 10**8), 4)


def test_reduced_and_full_decode_give_the_same_inputs():
    """Boxes at several scales in one 2048×1536 JPEG: the decode is reduced as far as the finest
    crop allows, and every input matches the full-size decode's (blobs at the same place)."""
    centres = [(400.2, 500.6), (1500.7, 900.3)]
    data = blobs_jpeg(2048, 1536, centres, sigma=20)
    boxes = [(100.0, 100.0, 900.0, 1100.0), (1000.0, 300.0, 2000.0, 1500.0)]
    reduced = prepare_image(data, None, boxes, INPUT, padding=1.25, max_pixels=10**8)
    full = prepare_image(
        data, None, boxes, INPUT, padding=1.25, max_pixels=10**8, reduced_decode=False
    )
    # Finest crop: a 1000 px box padded to 1250 → 0.2048 input px per image px → 1/4.
    assert (reduced.reduction, full.reduction) == (4, 1)
    assert (reduced.width, reduced.height) == (full.width, full.height) == (2048, 1536)
    for i, (x, y) in enumerate(centres[:2]):
        crop = full.crops[i]
        at = crop.matrix @ np.array([x, y, 1.0])  # where the blob must land in the input
        for prepared in (reduced, full):
            found = centroid(prepared.inputs[i, ..., 0], tuple(at), 30)
            assert found == pytest.approx(tuple(at), abs=0.05)
    difference = np.abs(reduced.inputs.astype(int) - full.inputs.astype(int))
    assert difference.mean() < 0.5


def test_no_reduction_when_a_crop_needs_the_detail_or_the_pixels_are_kept():
    data = blobs_jpeg(1024, 1024, [(512, 512)], sigma=20)

    def reduction(boxes, **options):
        prepared = prepare_image(
            data, None, boxes, INPUT, padding=1.25, max_pixels=10**8, **options
        )
        return prepared.reduction

    assert reduction(None) == 4  # the whole frame: 0.25 input px per image px
    assert reduction([(0, 0, 820, 820)]) == 4  # padded to 1025 px: 0.2498
    assert reduction([(0, 0, 800, 800)]) == 2  # padded to 1000 px: 0.256 needs more than 1/4
    assert reduction([(0, 0, 820, 820), (400, 400, 500, 500)]) == 1  # a 125 px crop needs it all
    assert reduction(None, keep_pixels=True) == 1
    assert reduction(None, reduced_decode=False) == 1
    png = cv2.imencode(".png", np.zeros((1024, 1024, 3), np.uint8))[1].tobytes()
    assert prepare_image(png, None, None, INPUT, padding=1.25, max_pixels=10**8).reduction == 1


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_with_reduced_decode(orientation):
    """Orientations 6 and 8 swap the axes after decoding: the whole frame is still found, at the
    displayed size, and the reduced input matches the full one."""
    jpeg = blobs_jpeg(1024, 640, [(300.5, 200.5), (800.2, 500.8)], sigma=15)
    data = jpeg[:2] + exif_app1(orientation) + jpeg[2:]
    reduced = prepare_image(data, None, None, INPUT, padding=1.25, max_pixels=10**8)
    full = prepare_image(
        data, None, None, INPUT, padding=1.25, max_pixels=10**8, reduced_decode=False
    )
    swapped = orientation in (5, 6, 7, 8)
    assert (reduced.width, reduced.height) == ((640, 1024) if swapped else (1024, 640))
    assert reduced.reduction == 4  # 1024 px on the long side → 0.25
    assert np.abs(reduced.inputs.astype(int) - full.inputs.astype(int)).mean() < 0.5


def test_boxes_are_still_checked_against_the_full_size():
    data = blobs_jpeg(1024, 1024, [(512, 512)], sigma=20)
    with pytest.raises(InvalidRequest, match="outside"):
        prepare_image(data, None, [(1100, 0, 1200, 900)], INPUT, padding=1.25, max_pixels=10**8)
    with pytest.raises(InvalidRequest, match="non-finite"):
        prepare_image(
            data, None, [(0, 0, float("nan"), 900)], INPUT, padding=1.25, max_pixels=10**8
        )


@pytest.mark.parametrize("photo", ["astronaut.jpg", "camera.jpg"])
def test_reduced_decode_barely_moves_the_default_models_keypoints(photo):
    """A real photo (512×512: decoded at 1/2 for the whole frame) through the default model:
    confident keypoints move by under 2 px, 0.4 % of the image side, between the two decodes."""
    session = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    data = (PHOTOS / photo).read_bytes()
    points, reductions = [], []
    for reduced_decode in (True, False):
        prepared = prepare_image(
            data, None, None, INPUT, padding=1.25, max_pixels=10**8, reduced_decode=reduced_decode
        )
        keypoints, scores = session.run(["keypoints", "scores"], {"image": prepared.inputs})
        points.append((prepared.crops[0].to_image(keypoints[0].astype(np.float64)), scores[0]))
        reductions.append(prepared.reduction)
    (reduced, scores), (full, _) = points
    assert reductions == [2, 1]
    confident = scores > 0.5
    assert confident.sum() >= 5
    moved = np.linalg.norm(reduced - full, axis=-1)[confident]
    assert moved.max() < 2.0
    assert moved.mean() < 0.5
