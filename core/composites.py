"""Pictures of several people made from photos of one each (for tests, parity checks and
benchmarks: the openly licensed fixture photos each hold one person)."""

from collections.abc import Sequence

import cv2
import numpy as np


def side_by_side(images: Sequence[np.ndarray], height: int) -> np.ndarray:
    """Images scaled to one height (area interpolation) and placed left to right."""
    scaled = [
        cv2.resize(
            image,
            (round(image.shape[1] * height / image.shape[0]), height),
            interpolation=cv2.INTER_AREA,
        )
        for image in images
    ]
    return np.ascontiguousarray(np.hstack(scaled))
