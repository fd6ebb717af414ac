"""A request's images through a sequence of stages, and what comes out: poses in image pixels.

A stage is one step of the data flow (decode → letterbox → detect → crop → pose → back to image
pixels). Each image of a request is an `ImageWork` that the stages fill in turn. Two kinds:

- `ImageStage`: one image at a time, synchronous. CPU-heavy ones (`offload = True`: decoding,
  warping) run in a worker thread, off the event loop; consecutive ones share one thread hop.
- `RequestStage`: every image of the request at once, asynchronous: it waits for shared work
  (a batch of inference with other requests' images or crops).

Nothing here knows HTTP or ONNX: requests arrive as bytes with their boxes and leave as results.
"""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from dipr.core.crops import Box
from dipr.core.detection import DetectedPerson
from dipr.core.images import DecodedImage, ImageHeader
from dipr.core.prepare import CroppedImage

T = TypeVar("T")


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    media_type: str | None  # as declared by the client, normalised (`core.images.media_type`)
    boxes: Sequence[Box] | None  # None: the persons are to be found (or the whole image is one)


@dataclass(frozen=True)
class PoseOptions:
    """Per-request choices."""

    keep_pixels: bool = False  # decode every pixel and return them (for drawing)
    # Find the persons of images sent without boxes (False: each is one whole-image crop; None:
    # whatever the service does, which is to detect unless detection is off).
    detect: bool | None = None
    min_score: float | None = None  # the detector's threshold; None: the service's default


@dataclass(frozen=True)
class PersonPose:
    box: Box
    score: float  # mean keypoint score
    keypoints: np.ndarray  # [K, 2] (x, y) image pixels, debiased
    keypoints_raw: np.ndarray  # [K, 2] uncorrected soft-argmax, image pixels
    scores: np.ndarray  # [K]
    box_score: float | None = None  # the detector's, for a person it found


@dataclass(frozen=True)
class ImagePoses:
    width: int
    height: int
    persons: list[PersonPose]
    pixels: np.ndarray | None = None  # the decoded RGB image, when asked for (drawing)


@dataclass
class ImageWork:
    """What the stages know of one image so far; each stage reads some fields and sets others."""

    source: ImageInput
    options: PoseOptions
    boxes: Sequence[Box] | None = None  # the persons to crop; None: the whole image
    header: ImageHeader | None = None  # set by decoding
    decoded: DecodedImage | None = None  # set by decoding (finer again after detection)
    detector_input: CroppedImage | None = None  # the letterbox, for an image to detect in
    detected: list[DetectedPerson] | None = None  # set by detection: `boxes` are theirs
    cropped: CroppedImage | None = None  # set by cropping
    pose_outputs: dict[str, np.ndarray] | None = None  # the pose model's rows, one per crop
    persons: list[PersonPose] = field(default_factory=list)

    @property
    def wants_detection(self) -> bool:
        return self.source.boxes is None and self.options.detect is not False

    def result(self) -> ImagePoses:
        decoded = required(self.decoded, "decoded")
        pixels = decoded.pixels if self.options.keep_pixels else None
        return ImagePoses(decoded.width, decoded.height, self.persons, pixels)


def required(value: T | None, name: str) -> T:
    """A field an earlier stage sets: its absence is a pipeline assembled in the wrong order."""
    if value is None:
        raise RuntimeError(f"no stage before this one set `{name}`")
    return value


class StageObserver(Protocol):
    """What the pipeline reports (the service turns it into metrics)."""

    def stage_done(self, stage: str, seconds: float) -> None: ...


class ImageStage:
    """One image at a time; `offload`: run in a worker thread (CPU-heavy)."""

    name: str = "image"
    offload: bool = True

    def run_image(self, work: ImageWork) -> None:
        raise NotImplementedError


class RequestStage:
    """Every image of one request at once, on the event loop."""

    name: str = "request"

    async def run_request(self, works: list[ImageWork], deadline: float) -> None:
        raise NotImplementedError


Stage = ImageStage | RequestStage


class _Unobserved:
    def stage_done(self, stage: str, seconds: float) -> None:
        pass


class Pipeline:
    def __init__(self, stages: Sequence[Stage], observer: StageObserver | None = None) -> None:
        self.stages = tuple(stages)
        self._steps = _group(self.stages)
        self._observer = observer or _Unobserved()

    async def run(
        self, images: Sequence[ImageInput], options: PoseOptions, deadline: float
    ) -> list[ImagePoses]:
        works = [ImageWork(image, options, image.boxes) for image in images]
        for step in self._steps:
            if isinstance(step, RequestStage):
                started = time.perf_counter()
                await step.run_request(works, deadline)
                self._observer.stage_done(step.name, time.perf_counter() - started)
            elif step[0].offload:
                await asyncio.gather(*(asyncio.to_thread(self._run_all, step, w) for w in works))
            else:
                for work in works:
                    self._run_all(step, work)
        return [work.result() for work in works]

    def _run_all(self, stages: tuple[ImageStage, ...], work: ImageWork) -> None:
        for stage in stages:
            started = time.perf_counter()
            stage.run_image(work)
            self._observer.stage_done(stage.name, time.perf_counter() - started)


def _group(stages: Sequence[Stage]) -> list[RequestStage | tuple[ImageStage, ...]]:
    """Consecutive image stages that run in the same place (thread or event loop) as one step."""
    steps: list[RequestStage | tuple[ImageStage, ...]] = []
    for stage in stages:
        previous = steps[-1] if steps else None
        if (
            isinstance(stage, ImageStage)
            and isinstance(previous, tuple)
            and previous[0].offload == stage.offload
        ):
            steps[-1] = (*previous, stage)
        elif isinstance(stage, ImageStage):
            steps.append((stage,))
        else:
            steps.append(stage)
    return steps
