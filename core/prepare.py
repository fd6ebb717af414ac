"""One image's bytes and person boxes → the network inputs, and the crops that map them back.

Two steps, which the service runs as two stages and `prepare_image` runs back to back:

- `decode_for_boxes`: every check that needs no pixels (the header, the boxes' shape), then the
  decode, at the coarsest scale that every crop allows when `reduced` (a 4032×3024 phone photo
  of one person becomes a 256×256 input: decoding is most of the CPU work outside the network,
  and the scaled decode averages pixels where a bilinear warp from full size would skip them);
- `crop_boxes`: the boxes' placement in the decoded picture, then one warp per box.

No boxes (None) means the whole picture is one crop, unpadded: it already is the region of
interest.
"""

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
from dipr.core.images import DecodedImage, decode, read_header


@dataclass(frozen=True)
class CroppedImage:
    boxes: list[Box]  # as cropped: the whole picture when none were given
    crops: list[Crop]
    inputs: np.ndarray  # uint8 [len(boxes), H, W, 3]


@dataclass(frozen=True)
class PreparedImage:
    decoded: DecodedImage
    cropped: CroppedImage


def decode_for_boxes(
    data: bytes,
    declared: str | None,
    boxes: Sequence[Box] | None,
    input_size: tuple[int, int],
    *,
    padding: float = PADDING,
    max_pixels: int,
    reduced: bool = True,
) -> DecodedImage:
    """Check the image and the boxes' shape, then decode; `reduced`: at the coarsest exact scale
    that no crop samples more finely than (else every pixel)."""
    header = read_header(data, declared, max_pixels)
    if boxes is None:
        # Either orientation: the EXIF tag is read by the decoder, not here.
        width, height = float(header.width), float(header.height)
        frames: list[Box] = [(0.0, 0.0, width, height), (0.0, 0.0, height, width)]
        scales = [crop_scale(frame, input_size, 1.0) for frame in frames]
    else:
        for box in boxes:
            check_box_shape(box)
        scales = [crop_scale(box, input_size, padding) for box in boxes]
    finest = max(scales)  # input pixels per image pixel; 0 for a box too large to be real
    at_most = 1 / finest if reduced and finest > 0 else 1.0
    return decode(data, header, at_most)


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
) -> PreparedImage:
    """Both steps, as the service runs them."""
    decoded = decode_for_boxes(
        data, declared, boxes, input_size, padding=padding, max_pixels=max_pixels, reduced=reduced
    )
    return PreparedImage(decoded, crop_boxes(decoded, boxes, input_size, padding=padding))
