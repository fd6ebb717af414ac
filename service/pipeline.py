"""One request's way through the model: decode → crops → batcher → inverse affine.

Nothing here knows HTTP: requests arrive as bytes with their boxes, and leave as plain results.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dipr.export import contract
from dipr.service.backend import ModelInfo
from dipr.service.batcher import Batcher
from dipr.service.preprocess import Box, PreparedImage, prepare_image


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


class PosePipeline:
    def __init__(
        self,
        batcher: Batcher,
        info: ModelInfo,
        max_image_pixels: int,
        box_padding: float,
        reduced_decode: bool = True,
    ) -> None:
        self._batcher = batcher
        self._info = info
        self._max_pixels = max_image_pixels
        self._padding = box_padding
        self._reduced_decode = reduced_decode

    def _prepare(self, image: ImageInput, keep_pixels: bool) -> PreparedImage:
        """CPU work for one image (runs in a worker thread, off the event loop)."""
        return prepare_image(
            image.data,
            image.content_type,
            image.boxes,
            self._info.input_size,
            padding=self._padding,
            max_pixels=self._max_pixels,
            keep_pixels=keep_pixels,
            reduced_decode=self._reduced_decode,
        )

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
