"""The service's work, assembled from the settings: the one object the HTTP layer is handed.

`Runtime.load` builds the ONNX Runtime backends (the pose model and, unless detection is off,
the person detector), one batcher each, the decode budget, the threads for CPU work and the
pipeline of stages (admit → decode → letterbox → crop → detect → crop → pose → back to image
pixels), warms both models up and only then reports ready. The HTTP layer calls `estimate` and
reads `model`, `detector`, `provider` and `readiness()`; it never sees a session, a batcher or a
stage.
"""

import asyncio
import logging
import os
import time
from collections.abc import Sequence

from dipr.core import detector_contract
from dipr.core.detector_contract import DetectorInfo
from dipr.core.errors import DeadlineExceeded, InvalidInput, ModelError, NotReady, Overloaded
from dipr.core.pose_contract import ModelInfo
from dipr.service.admission import DecodeBudget
from dipr.service.backend import (
    OnnxBackend,
    ProviderUnavailable,
    TensorrtOptions,
    warm_up_sizes,
)
from dipr.service.batcher import Batcher, Occupancy
from dipr.service.fair_pool import FairPool
from dipr.service.metrics import ServiceMetrics
from dipr.service.pipeline import ImageInput, ImagePoses, Pipeline, PoseOptions, Stage
from dipr.service.settings import Settings
from dipr.service.stages.admit import AdmitStage
from dipr.service.stages.crop import CropStage
from dipr.service.stages.decode import DecodeStage
from dipr.service.stages.detect import DetectStage
from dipr.service.stages.letterbox import LetterboxStage
from dipr.service.stages.pose import PoseStage
from dipr.service.stages.to_image import ToImageStage

log = logging.getLogger("dipr.service")


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.model: ModelInfo | None = None
        self.detector: DetectorInfo | None = None
        self.provider: str | None = None
        self._batchers: list[Batcher] = []
        # Both models' batches run on the same cores: a batch is alone only if no batch of
        # either model runs.
        self._occupancy = Occupancy()
        self._pipeline: Pipeline | None = None
        self._pool: FairPool | None = None
        self._not_ready: str | None = "loading the models"

    def load(self) -> None:
        """Load the models, warm them up, start batching; blocking (run it off the event loop).
        A model or provider that cannot serve leaves the runtime unready, with the reason."""
        try:
            pose, pose_batcher = self._load_pose()
            detection = self._load_detector() if self.settings.detect else None
        except (ModelError, ProviderUnavailable) as error:
            log.error("not ready: %s", error)
            self._not_ready = str(error)
            self.stop_batchers()
            return
        except Exception as error:  # ONNX Runtime at warm-up: out of memory, cuDNN missing, …
            # Up and unready with the reason, rather than a process that crash-loops.
            log.exception("not ready: the models failed to warm up")
            self._not_ready = f"warm-up failed: {type(error).__name__}: {error}"[:500]
            self.stop_batchers()
            return
        s = self.settings
        crop = CropStage(pose.info.input_size, s.box_padding)
        # Images sent with boxes are cropped right after decoding, the others after detection.
        cropping: list[Stage] = [crop]
        decode_size = pose.info.input_size
        if detection is not None:
            detector, detector_batcher = detection
            # The whole picture is decoded for the larger of the two inputs.
            width, height = detector.info.input_size
            decode_size = (max(decode_size[0], width), max(decode_size[1], height))
            cropping = [
                LetterboxStage(detector.info.input_size),
                crop,
                DetectStage(detector_batcher, s.min_person_score, s.detector_box),
                crop,
            ]
            self.detector = detector.info
            self._register(detector, "detector")
        cores = usable_cores()
        budget = DecodeBudget(s.decode_budget(cores), observer=self.metrics)
        self.metrics.decode_budget.set(budget.megapixels)
        # One more thread for light requests: a photo is not queued behind 7000×7000 decodes.
        self._pool = FairPool(s.cpu_workers or cores, light_workers=1)
        self._pool.start()
        admit = AdmitStage(
            budget,
            decode_size,
            s.box_padding,
            s.max_image_pixels,
            s.reduced_decode,
            detecting=detection is not None,
        )
        self._pipeline = Pipeline(
            [
                admit,
                DecodeStage(decode_size, s.box_padding, s.reduced_decode),
                *cropping,
                PoseStage(pose_batcher),
                ToImageStage(),
            ],
            self._pool,
            observer=self.metrics,
        )
        self.model, self.provider = pose.info, pose.provider
        self._register(pose, "pose")
        self._not_ready = None
        log.info("ready: %s %s on %s", pose.info.name, pose.info.version, pose.provider)

    def _load_pose(self) -> tuple[OnnxBackend[ModelInfo], Batcher]:
        s = self.settings
        backend: OnnxBackend[ModelInfo] = OnnxBackend(
            s.model_path,
            s.provider,
            s.device_id,
            s.intra_op_threads,
            TensorrtOptions(s.tensorrt_cache_dir, s.max_batch_size),
        )
        return backend, self._batcher(backend, "pose", s.max_batch_size, s.max_queue)

    def _load_detector(self) -> tuple[OnnxBackend[DetectorInfo], Batcher]:
        s = self.settings
        backend: OnnxBackend[DetectorInfo] = OnnxBackend(
            s.detector_path,
            s.provider,
            s.device_id,
            s.intra_op_threads,
            TensorrtOptions(s.tensorrt_cache_dir, s.detector_max_batch_size),
            describe=detector_contract.describe,
        )
        limits = (s.detector_max_batch_size, s.detector_max_queue)
        return backend, self._batcher(backend, "detector", *limits)

    def _batcher(
        self,
        backend: OnnxBackend[ModelInfo] | OnnxBackend[DetectorInfo],
        model: str,
        max_batch_size: int,
        max_queue: int,
    ) -> Batcher:
        """A started batcher for the model, its batches counted with the other model's (both
        run on the same cores), the model warmed up at every batch size it will run."""
        s = self.settings
        workers = backend.configure_workers(s.inference_workers, s.intra_op_threads)
        observer = self.metrics.batcher_observer(model)
        observer.capacity.set(max_queue)
        batcher = Batcher(
            backend.infer,
            max_batch_size,
            max_queue,
            s.batch_delay_ms / 1000,
            observer=observer,
            workers=workers,
            # Only with a second session to run them on (CPU, several workers): otherwise a
            # deep queue would be cut into quarter batches for nothing (one GPU worker).
            infer_alongside=backend.infer_alongside if backend.has_alongside_session else None,
            occupancy=self._occupancy,
            name=model,
        )
        self._batchers.append(batcher)
        batcher.start()
        backend.warm_up(warm_up_sizes(max_batch_size), batcher.alongside_batch_size)
        return batcher

    def _register(
        self, backend: OnnxBackend[ModelInfo] | OnnxBackend[DetectorInfo], role: str
    ) -> None:
        info = backend.info
        self.metrics.model_info.labels(role, info.name, info.version, backend.provider).set(1)

    async def estimate(
        self, images: Sequence[ImageInput], options: PoseOptions, deadline: float
    ) -> list[ImagePoses]:
        """Poses of every person box (or person found, or whole image) of `images`, in order,
        by `deadline` (time.monotonic()) or DeadlineExceeded then, whatever the request waits
        for; its work not yet started is dropped. Loading, draining or a refused GPU refuse
        new work (NotReady); a streak of failed batches does not: it only takes the replica out
        of rotation, and the next good batch ends it."""
        if self._not_ready is not None or self._pipeline is None:
            raise NotReady(f"not ready: {self._not_ready}")
        if options.detect and self.detector is None:
            raise InvalidInput("person detection is off in this service (DIPR_DETECT=false)")
        try:
            async with asyncio.timeout(deadline - time.monotonic()):
                results = await self._pipeline.run(images, options, deadline)
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed before it was done") from None
        except Overloaded as refusal:
            self.metrics.overloaded.labels(refusal.cause).inc()
            raise
        self.metrics.images.inc(len(results))
        for result in results:
            self.metrics.persons.inc(len(result.persons))
            self.metrics.persons_per_image.observe(len(result.persons))
        return results

    def readiness(self) -> str | None:
        """None when ready, else why not."""
        if self._not_ready is not None:
            return self._not_ready
        failures = max((b.consecutive_failures for b in self._batchers), default=0)
        if failures >= self.settings.failure_threshold:
            return f"the last {failures} inference batches failed"
        return None

    def begin_drain(self) -> None:
        """Readiness goes 503 and new work is refused; accepted work goes on."""
        self._not_ready = "shutting down"

    def stop(self) -> None:
        """Finish what the batchers and the CPU threads accepted, then end them."""
        self.begin_drain()
        self.stop_batchers()
        if self._pool is not None:
            self._pool.stop()

    def stop_batchers(self) -> None:
        for batcher in self._batchers:
            batcher.stop()
