"""The benchmark's group photo: fixture photos of one person each, side by side, as a JPEG."""

from collections.abc import Sequence
from pathlib import Path

import cv2

from dipr.core.composites import side_by_side


def group_photo(folder: Path, photos: Sequence[str], height: int = 480) -> bytes:
    """A JPEG of `photos` (files in `folder`) scaled to one height and placed side by side."""
    images = []
    for name in photos:
        bgr = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read {folder / name}")
        images.append(bgr)
    ok, encoded = cv2.imencode(".jpg", side_by_side(images, height), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()
