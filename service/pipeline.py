"""A request's images through a sequence of stages, and what comes out: poses in image pixels.

A stage is one step of the data flow (admit → decode → letterbox → crop → detect → crop → pose →
back to image pixels). Each image of a request is an `ImageWork` that the stages fill in turn.
Two kinds:

- `ImageStage`: one image at a time, synchronous, for the images it `applies` to. CPU-heavy ones
  (`offload = True`: decoding, warping) run in the `FairPool`'s threads, off the event loop,
  taking turns with other requests; consecutive ones share one unit of work.
- `RequestStage`: every image of the request at once, asynchronous: it decides admission, or
  waits for shared work (a batch of inference with other requests' images or crops).

Nothing here knows HTTP or ONNX: requests arrive as bytes with their boxes and leave as results.
"""

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol, TypeVar

import numpy as np

from dipr.core.crops import Box
from dipr.core.detection import DetectedPerson
from dipr.core.errors import DiprError, image_place
from dipr.core.images import DecodedImage, ImageHeader
from dipr.core.prepare import CroppedImage
from dipr.service.admission import Admission
from dipr.service.fair_pool import FairPool, RequestQueue

T = TypeVar("T")


@dataclass(frozen=True)
class ImageInput:
    data: bytes
    media_type: str | None  # as declared by the client, normalised (`core.images.media_type`)
    boxes: Sequence[Box] | None  # None: the persons are to be found (or the whole image is one)
    name: str | None = None  # the client's file name for it, if any: errors name the image by it


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
    index: int  # its place in the request
    boxes: Sequence[Box] | None = None  # the persons to crop; None: the whole image
    header: ImageHeader | None = None  # set by admission
    admission: Admission | None = None  # the request's hold on the decode budget
    size: tuple[int, int] | None = None  # (width, height) in image pixels, set by decoding
    # Set by decoding (finer again after detection), dropped once cropped unless kept.
    decoded: DecodedImage | None = None
    detector_input: CroppedImage | None = None  # the letterbox, for an image to detect in
    detected: list[DetectedPerson] | None = None  # set by detection: `boxes` are theirs
    cropped: CroppedImage | None = None  # set by cropping
    pose_outputs: dict[str, np.ndarray] | None = None  # the pose model's rows, one per crop
    persons: list[PersonPose] = field(default_factory=list)

    @property
    def wants_detection(self) -> bool:
        return self.source.boxes is None and self.options.detect is not False

    def decoding_done(self) -> None:
        """Its pixels are no longer needed: dropped, and their cost given back to the budget
        (pixels kept for drawing are held, and paid for, until the request ends)."""
        if self.options.keep_pixels:
            return
        self.decoded = None
        if self.admission is not None:
            self.admission.image_done(self.index)

    def result(self) -> ImagePoses:
        width, height = required(self.size, "size")
        pixels = required(self.decoded, "decoded").pixels if self.options.keep_pixels else None
        return ImagePoses(width, height, self.persons, pixels)


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

    def applies(self, work: ImageWork) -> bool:
        """Whether this image needs the stage now (else it is skipped, and not timed)."""
        return True

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
    def __init__(
        self, stages: Sequence[Stage], pool: FairPool, observer: StageObserver | None = None
    ) -> None:
        self.stages = tuple(stages)
        self._steps = _group(self.stages)
        self._pool = pool
        self._observer = observer or _Unobserved()

    async def run(
        self, images: Sequence[ImageInput], options: PoseOptions, deadline: float
    ) -> list[ImagePoses]:
        works = [ImageWork(image, options, i, image.boxes) for i, image in enumerate(images)]
        queue = self._pool.queue(deadline)
        try:
            for step in self._steps:
                if isinstance(step, RequestStage):
                    started = time.perf_counter()
                    await step.run_request(works, deadline)
                    self._observer.stage_done(step.name, time.perf_counter() - started)
                elif step[0].offload:
                    await self._offload(queue, step, works)
                else:
                    for work in works:
                        self._run_all(step, work)
            return [work.result() for work in works]
        finally:
            queue.close()  # whatever has not started (the request failed or timed out) goes
            for work in works:  # the request's one admission: closing it again is harmless
                if work.admission is not None:
                    work.admission.close()

    async def _offload(
        self, queue: RequestQueue, stages: tuple[ImageStage, ...], works: list[ImageWork]
    ) -> None:
        admission = works[0].admission if works else None
        queue.light = admission is not None and admission.lane == "light"
        if len(works) == 1:  # the common request: awaited as is, no task to create and gather
            await queue.run(partial(self._run_all, stages, works[0]))
            return
        tasks = [asyncio.ensure_future(queue.run(partial(self._run_all, stages, w))) for w in works]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one image failed, or the request is cancelled: the rest go
                task.cancel()
            raise

    def _run_all(self, stages: tuple[ImageStage, ...], work: ImageWork) -> None:
        for stage in stages:
            if not stage.applies(work):
                continue
            started = time.perf_counter()
            try:
                stage.run_image(work)
            except DiprError as error:
                # The images of a request run side by side: the client must learn which failed.
                error.at(image_place(work.index, work.source.name))
                raise
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
