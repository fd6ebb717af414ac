"""Top-down person crops: box → padded, aspect-corrected square of the model input → warp, and back.

A box [x1, y1, x2, y2] (pixel edges) becomes a centre and a size, padded by 1.25 and widened or
heightened to the model's aspect ratio, then one cv2.warpAffine maps that region of the full image
straight onto the network input. Keypoints come back through the inverse of the same affine.
Coordinates are pixel indices (centre of the first pixel = 0) on both sides.
"""

from dataclasses import dataclass

import cv2
import numpy as np

PADDING = 1.25


@dataclass(frozen=True)
class Crop:
    """One region of an image, resampled to the network input by `matrix` (2×3, image → input)."""

    matrix: np.ndarray
    inverse: np.ndarray

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] input-pixel (x, y) → image pixels."""
        return points @ self.inverse[:, :2].T + self.inverse[:, 2]

    def matrix_from_reduced(self, reduction: int) -> np.ndarray:
        """The same mapping, from an image decoded at 1/reduction: its pixel r averages image
        pixels [f·r, f·r + f), whose centre is f·r + (f − 1)/2."""
        f = float(reduction)
        linear = self.matrix[:, :2]
        return np.hstack(
            [linear * f, (linear @ np.full(2, (f - 1) / 2) + self.matrix[:, 2])[:, None]]
        )


def crop_scale(
    box: tuple[float, float, float, float] | np.ndarray,
    input_size: tuple[int, int],
    padding: float = PADDING,
) -> float:
    """Input pixels per image pixel of the box's crop: the padded box, its short side grown to
    the input's aspect ratio (no distortion), fills the input."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = input_size
    return min(width / ((x2 - x1) * padding), height / ((y2 - y1) * padding))


def crop_for_box(
    box: tuple[float, float, float, float] | np.ndarray,
    input_size: tuple[int, int],
    padding: float = PADDING,
) -> Crop:
    """The affine that maps the padded box onto an input of `input_size` = (width, height)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    width, height = input_size
    scale = crop_scale(box, input_size, padding)  # input pixels per image pixel, both axes
    box_w, box_h = width / scale, height / scale
    # Continuous coordinates (edges) map as u' = (u - left) * scale; index = continuous - 0.5.
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = centre_x - box_w / 2, centre_y - box_h / 2
    shift_x = (0.5 - left) * scale - 0.5
    shift_y = (0.5 - top) * scale - 0.5
    matrix = np.array([[scale, 0.0, shift_x], [0.0, scale, shift_y]])
    return Crop(matrix=matrix, inverse=cv2.invertAffineTransform(matrix))


def warp(
    image: np.ndarray, crop: Crop, input_size: tuple[int, int], reduction: int = 1
) -> np.ndarray:
    """The network input for one crop: bilinear, zero outside the image. `image` may be the
    picture decoded at 1/reduction of its size."""
    return cv2.warpAffine(
        image,
        crop.matrix if reduction == 1 else crop.matrix_from_reduced(reduction),
        input_size,
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
