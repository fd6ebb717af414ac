"""The service's work, assembled from the settings: the one object the HTTP layer is handed.

`Runtime.load` builds the ONNX Runtime backends (the pose model and, unless detection is off,
the person detector), one batcher each, and the pipeline of stages (decode → letterbox → detect
→ crop → pose → back to image pixels), warms both models up and only then reports ready. The
HTTP layer calls `estimate` and reads `model`, `detector`, `provider` and `readiness()`; it
never sees a session, a batcher or a stage.
"""

import logging
from collections.abc import Sequence

from dipr.core import detector_contract
from dipr.core.detector_contract import DetectorInfo
from dipr.core.errors import InvalidInput, ModelError, NotReady
from dipr.core.pose_contract import ModelInfo
from dipr.service.backend import (
    OnnxBackend,
    ProviderUnavailable,
    TensorrtOptions,
    warm_up_sizes,
)
from dipr.service.batcher import Batcher, Occupancy
from dipr.service.metrics import ServiceMetrics
from dipr.service.pipeline import ImageInput, ImagePoses, Pipeline, PoseOptions, Stage
from dipr.service.settings import Settings
from dipr.service.stages.crop import CropStage
from dipr.service.stages.decode import DecodeStage
from dipr.service.stages.detect import DetectStage
from dipr.service.stages.letterbox import LetterboxStage
from dipr.service.stages.pose import PoseStage
from dipr.service.stages.to_image import ToImageStage

log = logging.getLogger("dipr.service")


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
        s = self.settings
        stages: list[Stage] = []
        decode_size = pose.info.input_size
        if detection is not None:
            detector, detector_batcher = detection
            # The whole picture is decoded for the larger of the two inputs.
            width, height = detector.info.input_size
            decode_size = (max(decode_size[0], width), max(decode_size[1], height))
            stages += [
                LetterboxStage(detector.info.input_size),
                DetectStage(detector_batcher, s.min_person_score, s.detector_box),
            ]
            self.detector = detector.info
            self._register(detector, "detector")
        self._pipeline = Pipeline(
            [
                DecodeStage(decode_size, s.box_padding, s.max_image_pixels, s.reduced_decode),
                *stages,
                CropStage(pose.info.input_size, s.box_padding),
                PoseStage(pose_batcher),
                ToImageStage(),
            ],
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
            infer_alongside=backend.infer_alongside,
            occupancy=self._occupancy,
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
        """Poses of every person box (or person found, or whole image) of `images`, in order.
        Loading, draining or a refused GPU refuse new work (NotReady); a streak of failed
        batches does not: it only takes the replica out of rotation, and the next good batch
        ends it."""
        if self._not_ready is not None or self._pipeline is None:
            raise NotReady(f"not ready: {self._not_ready}")
        if options.detect and self.detector is None:
            raise InvalidInput("person detection is off in this service (DIPR_DETECT=false)")
        results = await self._pipeline.run(images, options, deadline)
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
        """Finish what the batchers accepted, then end them."""
        self.begin_drain()
        self.stop_batchers()

    def stop_batchers(self) -> None:
        for batcher in self._batchers:
            batcher.stop()
