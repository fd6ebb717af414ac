"""Top-down person crops: box → padded, aspect-corrected region of the model input → warp, and back.

A box [x1, y1, x2, y2] (pixel edges) becomes a centre and a size, padded by PADDING and widened or
heightened to the model's aspect ratio; one cv2.warpAffine maps that region of the image straight
onto the network input, and keypoints come back through the inverse of the same affine.
Coordinates are pixel indices (centre of the first pixel = 0) on both sides.

The service, `dipr eval` and `dipr train` all crop with this module, so that the network is
trained, measured and served on the same crops.
"""

import math
from dataclasses import dataclass

import cv2
import numpy as np

from dipr.core.errors import InvalidInput
from dipr.core.images import DecodedImage

# How much larger than the person box the crop is (both sides), as in SimpleBaseline and MMPose.
PADDING = 1.25
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels (edges)


@dataclass(frozen=True)
class Crop:
    """One region of an image, resampled to the network input by `matrix` (2×3, image → input)."""

    matrix: np.ndarray
    inverse: np.ndarray

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "Crop":
        return cls(matrix=matrix, inverse=cv2.invertAffineTransform(matrix))

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] input-pixel (x, y) → image pixels."""
        return points @ self.inverse[:, :2].T + self.inverse[:, 2]


def check_box_shape(box: Box) -> None:
    """What a box must be whatever the image: finite, with x2 > x1 and y2 > y1.

    A COCO-style [x, y, width, height] box is the commonest mix-up. When it fails here and would
    be a box as [x, y, width, height], the message says so; one whose width and height happen to
    exceed x and y is a valid [x1, y1, x2, y2] box (a different one), and nothing can tell.
    """
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        raise InvalidInput(f"box {_listed(box)} has a non-finite coordinate")
    if x2 <= x1 or y2 <= y1:
        message = f"box {_listed(box)} has no area: need x2 > x1 and y2 > y1"
        if x2 > 0 and y2 > 0:  # a width and a height
            corners = _listed((x1, y1, x1 + x2, y1 + y2))
            message += (
                "; boxes are [x1, y1, x2, y2] corners, not COCO [x, y, width, height]: if this "
                f"one is [x, y, width, height], send {corners}"
            )
        raise InvalidInput(message)


def _listed(box: Box) -> str:
    """A box as the client would write it: 10, not 10.0 (the JSON's integers arrive as floats)."""
    values = [float(v) for v in box]  # callers inside Python may pass ints
    return "[" + ", ".join(str(int(v)) if _whole(v) else repr(v) for v in values) + "]"


def _whole(value: float) -> bool:
    return math.isfinite(value) and value.is_integer() and abs(value) < 1e15


def check_box_placement(box: Box, width: int, height: int) -> None:
    """What a box of the right shape must be in a `width`×`height` image: overlapping it, and of
    a size a person could have (beyond that the crop's arithmetic overflows to inf or NaN)."""
    x1, y1, x2, y2 = box
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise InvalidInput(f"box {_listed(box)} lies outside the {width}×{height} image")
    reach = 16 * max(width, height)
    if min(x1, y1) < -reach or max(x2, y2) > reach or min(x2 - x1, y2 - y1) < 1e-3:
        raise InvalidInput(
            f"box {_listed(box)} is too large or too small for the {width}×{height} image"
        )


def crop_scale(box: Box, input_size: tuple[int, int], padding: float = PADDING) -> float:
    """Input pixels per image pixel of the box's crop: the padded box, its short side grown to
    the input's aspect ratio (no distortion), fills the input."""
    x1, y1, x2, y2 = box
    width, height = input_size
    return min(width / ((x2 - x1) * padding), height / ((y2 - y1) * padding))


def crop_for_box(box: Box, input_size: tuple[int, int], padding: float = PADDING) -> Crop:
    """The affine that maps the padded box onto an input of `input_size` = (width, height)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = input_size
    scale = crop_scale((x1, y1, x2, y2), input_size, padding)  # both axes
    region_w, region_h = width / scale, height / scale
    # Continuous coordinates (edges) map as u' = (u - left) * scale; index = continuous - 0.5.
    left, top = (x1 + x2) / 2 - region_w / 2, (y1 + y2) / 2 - region_h / 2
    shift_x = (0.5 - left) * scale - 0.5
    shift_y = (0.5 - top) * scale - 0.5
    return Crop.from_matrix(np.array([[scale, 0.0, shift_x], [0.0, scale, shift_y]]))


def warp(image: DecodedImage, crop: Crop, input_size: tuple[int, int]) -> np.ndarray:
    """The network input for one crop: bilinear, zero outside the image. The decoded pixels are
    sampled through their own mapping to image pixels (the identity unless the picture was
    decoded at a reduced scale)."""
    # input = crop.matrix · image pixel, image pixel = image.to_image · decoded pixel.
    linear, shift = crop.matrix[:, :2], crop.matrix[:, 2]
    to_image = image.to_image
    matrix = np.hstack([linear @ to_image[:, :2], (linear @ to_image[:, 2] + shift)[:, None]])
    return cv2.warpAffine(
        image.pixels,
        matrix,
        input_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
