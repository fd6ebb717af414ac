"""One request's way through the model: decode → crops → batcher → inverse affine.

Nothing here knows HTTP: requests arrive as bytes with their boxes, and leave as plain results.
"""

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dipr.export import contract
from dipr.service.backend import ModelInfo
from dipr.service.batcher import Batcher
from dipr.service.crops import Crop, crop_for_box, warp
from dipr.service.errors import InvalidRequest
from dipr.service.images import decode_image

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    content_type: str | None
    boxes: Sequence[Box] | None  # None: the whole image is one person


@dataclass(frozen=True)
class PersonPose:
    box: Box
    score: float  # mean keypoint score
    keypoints: np.ndarray  # [K, 2] (x, y) image pixels, debiased
    keypoints_raw: np.ndarray  # [K, 2] uncorrected soft-argmax, image pixels
    scores: np.ndarray  # [K]


@dataclass(frozen=True)
class ImagePoses:
    width: int
    height: int
    persons: list[PersonPose]
    pixels: np.ndarray | None = None  # the decoded RGB image, when asked for (rendering)


@dataclass(frozen=True)
class _Prepared:
    width: int
    height: int
    boxes: list[Box]
    crops: list[Crop]
    inputs: np.ndarray  # [n, H, W, 3]
    pixels: np.ndarray | None


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


class PosePipeline:
    def __init__(
        self, batcher: Batcher, info: ModelInfo, max_image_pixels: int, box_padding: float
    ) -> None:
        self._batcher = batcher
        self._info = info
        self._max_pixels = max_image_pixels
        self._padding = box_padding

    def _prepare(self, image: ImageInput, keep_pixels: bool) -> _Prepared:
        """CPU work for one image (runs in a worker thread, off the event loop)."""
        rgb = decode_image(image.data, image.content_type, self._max_pixels)
        height, width = rgb.shape[:2]
        if image.boxes is None:
            # The whole frame, unpadded: it already is the region of interest.
            boxes: list[Box] = [(0.0, 0.0, float(width), float(height))]
            padding = 1.0
        else:
            boxes = [tuple(float(v) for v in box) for box in image.boxes]  # type: ignore[misc]
            padding = self._padding
        for box in boxes:
            validate_box(box, width, height)
        size = self._info.input_size
        crops = [crop_for_box(box, size, padding) for box in boxes]
        inputs = np.empty((len(crops), size[1], size[0], 3), np.uint8)
        for i, crop in enumerate(crops):
            inputs[i] = warp(rgb, crop, size)
        return _Prepared(width, height, boxes, crops, inputs, rgb if keep_pixels else None)

    async def run(
        self, images: Sequence[ImageInput], deadline: float, keep_pixels: bool = False
    ) -> list[ImagePoses]:
        prepared = await asyncio.gather(
            *(asyncio.to_thread(self._prepare, image, keep_pixels) for image in images)
        )
        crops = np.concatenate([p.inputs for p in prepared]) if prepared else np.empty((0,))
        outputs = await self._batcher.submit(crops, deadline)
        results, row = [], 0
        for image in prepared:
            persons = []
            for box, crop in zip(image.boxes, image.crops, strict=True):
                scores = outputs[contract.SCORES][row]
                persons.append(
                    PersonPose(
                        box=box,
                        score=float(scores.mean()),
                        keypoints=crop.to_image(outputs[contract.KEYPOINTS][row]),
                        keypoints_raw=crop.to_image(outputs[contract.KEYPOINTS_RAW][row]),
                        scores=scores,
                    )
                )
                row += 1
            results.append(ImagePoses(image.width, image.height, persons, image.pixels))
        return results
