"""One image's bytes and person boxes → the network inputs, and the crops that map them back.

JPEGs are decoded at 1/2, 1/4 or 1/8 of their size when every crop samples the picture that
coarsely anyway (a 4032×3024 photo of one person becomes a 256×256 input): decoding is most of
the CPU work outside the network, and the scaled decode averages pixels where a bilinear warp
from full size would skip them.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dipr.service.crops import Crop, crop_for_box, crop_scale, warp
from dipr.service.errors import InvalidRequest
from dipr.service.images import decode_pixels, read_header

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels


@dataclass(frozen=True)
class PreparedImage:
    width: int  # the picture's, after EXIF orientation
    height: int
    boxes: list[Box]
    crops: list[Crop]
    inputs: np.ndarray  # uint8 [len(boxes), H, W, 3]
    pixels: np.ndarray | None  # the full-size RGB picture, when asked for (rendering)
    reduction: int  # the JPEG was decoded at 1/reduction of its size (1: every pixel)


def validate_box(box: Box, width: int, height: int) -> None:
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise InvalidRequest(f"box {list(box)} has a non-finite coordinate")
    if x2 <= x1 or y2 <= y1:
        raise InvalidRequest(f"box {list(box)} has no area: need x2 > x1 and y2 > y1")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise InvalidRequest(f"box {list(box)} lies outside the {width}×{height} image")
    # Beyond any real person box, and where the crop's arithmetic overflows to inf or NaN.
    reach = 16 * max(width, height)
    if min(x1, y1) < -reach or max(x2, y2) > reach or min(x2 - x1, y2 - y1) < 1e-3:
        raise InvalidRequest(
            f"box {list(box)} is too large or too small for the {width}×{height} image"
        )


def _finest_scale(boxes: Sequence[Box], input_size: tuple[int, int], padding: float) -> float:
    """The most input pixels per image pixel that any crop of these boxes asks for; inf for a
    box the validation will refuse (decoded at full size, the error comes after)."""
    finest = 0.0
    for box in boxes:
        if not (all(map(math.isfinite, box)) and box[2] > box[0] and box[3] > box[1]):
            return math.inf
        scale = crop_scale(box, input_size, padding)  # 0 for a box of infinite size
        finest = max(finest, scale if math.isfinite(scale) and scale > 0 else math.inf)
    return finest


def prepare_image(
    data: bytes,
    content_type: str | None,
    boxes: Sequence[Box] | None,
    input_size: tuple[int, int],
    *,
    padding: float,
    max_pixels: int,
    keep_pixels: bool = False,
    reduced_decode: bool = True,
) -> PreparedImage:
    """Check and decode the image, then warp one network input per box (None: the whole image,
    unpadded: it already is the region of interest). `reduced_decode`: a JPEG may be decoded at
    a reduced scale (never when its full-size pixels are kept)."""
    header = read_header(data, content_type, max_pixels)
    if boxes is None:
        # Either orientation: the EXIF tag is read by the decoder, not here.
        sides = (header.width, header.height)
        boxes_or_frames: Sequence[Box] = [(0, 0, *sides), (0, 0, *sides[::-1])]
        finest = _finest_scale(boxes_or_frames, input_size, 1.0)
    else:
        boxes = [tuple(float(v) for v in box) for box in boxes]  # type: ignore[misc]
        finest = _finest_scale(boxes, input_size, padding)
    reduction = header.largest_reduction(1 / finest) if reduced_decode and not keep_pixels else 1
    rgb = decode_pixels(data, header, reduction)
    height, width = rgb.shape[0] * reduction, rgb.shape[1] * reduction
    if boxes is None:
        boxes, padding = [(0.0, 0.0, float(width), float(height))], 1.0
    for box in boxes:
        validate_box(box, width, height)
    crops = [crop_for_box(box, input_size, padding) for box in boxes]
    inputs = np.empty((len(crops), input_size[1], input_size[0], 3), np.uint8)
    for i, crop in enumerate(crops):
        inputs[i] = warp(rgb, crop, input_size, reduction)
    pixels = rgb if keep_pixels else None
    return PreparedImage(width, height, list(boxes), crops, inputs, pixels, reduction)
