"""One image's bytes and person boxes → the network inputs, and the crops that map them back.

Two steps, which the service runs as two stages and `prepare_image` runs back to back:

- `decode_for_boxes`: the boxes' shape checked (the header already was, by `read_header`), then
  the decode, at the coarsest scale that every crop allows when `reduced` (a 4032×3024 phone
  photo of one person becomes a 256×256 input: decoding is most of the CPU work outside the
  network, and the scaled decode averages pixels where a bilinear warp from full size would skip
  them); `refine_for_boxes` decodes again, finer, for boxes found only after decoding. Both
  decode with `decoder` (`core.decoders`; OpenCV unless told otherwise), which has the last word
  on the scale (OpenCV: JPEG only, by a factor that divides both sides; nvImageCodec: none);
- `crop_boxes`: the boxes' placement in the decoded picture, then one warp per box.

No boxes (None) means the whole picture is one crop, unpadded: it already is the region of
interest.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dipr.core.crops import (
    PADDING,
    Box,
    Crop,
    check_box_placement,
    check_box_shape,
    crop_for_box,
    crop_scale,
    warp,
)
from dipr.core.decoders import OPENCV, ImageDecoder
from dipr.core.images import DecodedImage, ImageHeader, read_header


@dataclass(frozen=True)
class CroppedImage:
    boxes: list[Box]  # as cropped: the whole picture when none were given
    crops: list[Crop]
    inputs: np.ndarray  # uint8 [len(boxes), H, W, 3]


@dataclass(frozen=True)
class PreparedImage:
    decoded: DecodedImage
    cropped: CroppedImage


def coarsest_reduction(
    header: ImageHeader,
    boxes: Sequence[Box] | None,
    input_size: tuple[int, int],
    padding: float = PADDING,
) -> float:
    """How coarsely the picture may be decoded for these crops (image pixels per decoded pixel,
    before the decoder's own constraints): the inverse of the finest crop's scale. Boxes must
    have passed `check_box_shape`."""
    if boxes is None:
        # Either orientation: the EXIF tag is read by the decoder, not here.
        width, height = float(header.width), float(header.height)
        frames: list[Box] = [(0.0, 0.0, width, height), (0.0, 0.0, height, width)]
        scales = [crop_scale(frame, input_size, 1.0) for frame in frames]
    else:
        scales = [crop_scale(box, input_size, padding) for box in boxes]
    finest = max(scales, default=0.0)  # input px per image px; 0: no box, or one too large
    return 1 / finest if finest > 0 else math.inf


def decode_for_boxes(
    data: bytes,
    header: ImageHeader,
    boxes: Sequence[Box] | None,
    input_size: tuple[int, int],
    *,
    padding: float = PADDING,
    reduced: bool = True,
    decoder: ImageDecoder = OPENCV,
) -> DecodedImage:
    """Check the boxes' shape, then decode; `reduced`: at the coarsest exact scale that no crop
    samples more finely than and that `decoder` can (else every pixel)."""
    for box in boxes or ():
        check_box_shape(box)
    at_most = coarsest_reduction(header, boxes, input_size, padding) if reduced else 1.0
    # Only a box too large to be real asks for no pixels: decoded in full, its placement is
    # refused next.
    return decoder.decode(data, header, at_most if math.isfinite(at_most) else 1.0)


def refine_for_boxes(
    data: bytes,
    header: ImageHeader,
    image: DecodedImage,
    boxes: Sequence[Box],
    input_size: tuple[int, int],
    *,
    padding: float = PADDING,
    decoder: ImageDecoder = OPENCV,
) -> DecodedImage:
    """The picture decoded finely enough for `boxes` found after it was decoded (by a detector):
    `image` itself when it already is (always, from a full-scale decoder), else a finer decode of
    `data` by `decoder`."""
    for box in boxes:
        check_box_shape(box)
    allowed = decoder.reduction(header, coarsest_reduction(header, boxes, input_size, padding))
    if image.reduction <= allowed:
        return image
    return decoder.decode(data, header, allowed)


def crop_boxes(
    image: DecodedImage,
    boxes: Sequence[Box] | None,
    input_size: tuple[int, int],
    *,
    padding: float = PADDING,
) -> CroppedImage:
    """Check where the boxes lie, then warp one network input per box."""
    if boxes is None:
        boxes, padding = [(0.0, 0.0, float(image.width), float(image.height))], 1.0
    for box in boxes:
        check_box_placement(box, image.width, image.height)
    crops = [crop_for_box(box, input_size, padding) for box in boxes]
    inputs = np.empty((len(crops), input_size[1], input_size[0], 3), np.uint8)
    for i, crop in enumerate(crops):
        inputs[i] = warp(image, crop, input_size)
    return CroppedImage(list(boxes), crops, inputs)


def prepare_image(
    data: bytes,
    declared: str | None,
    boxes: Sequence[Box] | None,
    input_size: tuple[int, int],
    *,
    padding: float = PADDING,
    max_pixels: int,
    reduced: bool = True,
    decoder: ImageDecoder = OPENCV,
) -> PreparedImage:
    """Both steps, as the service runs them."""
    header = read_header(data, declared, max_pixels)
    decoded = decode_for_boxes(
        data, header, boxes, input_size, padding=padding, reduced=reduced, decoder=decoder
    )
    return PreparedImage(decoded, crop_boxes(decoded, boxes, input_size, padding=padding))
