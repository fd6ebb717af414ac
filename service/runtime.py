"""The service's work, assembled from the settings: the one object the HTTP layer is handed.

`Runtime.load` builds the ONNX Runtime backend, the batcher and the pipeline of stages
(decode → crop → pose → back to image pixels), warms the model up and only then reports ready.
The HTTP layer calls `estimate` and reads `model`, `provider` and `readiness()`; it never sees a
session, a batcher or a stage.
"""

import logging
from collections.abc import Sequence

from dipr.core.contract import ModelInfo
from dipr.core.errors import ModelError, NotReady
from dipr.service.backend import OnnxBackend, ProviderUnavailable, TensorrtOptions
from dipr.service.batcher import Batcher
from dipr.service.metrics import ServiceMetrics
from dipr.service.pipeline import ImageInput, ImagePoses, Pipeline, PoseOptions
from dipr.service.settings import Settings
from dipr.service.stages.crop import CropStage
from dipr.service.stages.decode import DecodeStage
from dipr.service.stages.pose import PoseStage
from dipr.service.stages.to_image import ToImageStage

log = logging.getLogger("dipr.service")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics()
        self.model: ModelInfo | None = None
        self.provider: str | None = None
        self._batcher: Batcher | None = None
        self._pipeline: Pipeline | None = None
        self._not_ready: str | None = "loading the model"

    def load(self) -> None:
        """Load the model, warm it up, start batching; blocking (run it off the event loop).
        A model or provider that cannot serve leaves the runtime unready, with the reason."""
        s = self.settings
        try:
            backend = OnnxBackend(
                s.model_path,
                s.provider,
                s.device_id,
                s.intra_op_threads,
                TensorrtOptions(s.tensorrt_cache_dir, s.max_batch_size),
            )
            workers = backend.configure_workers(s.inference_workers, s.intra_op_threads)
            batcher = Batcher(
                backend.infer,
                s.max_batch_size,
                s.max_queue,
                s.batch_delay_ms / 1000,
                observer=self.metrics,
                workers=workers,
                infer_alongside=backend.infer_alongside,
            )
            backend.warm_up(s.warmup_batch_sizes, batcher.alongside_batch_size)
        except (ModelError, ProviderUnavailable) as error:
            log.error("not ready: %s", error)
            self._not_ready = str(error)
            return
        batcher.start()
        self._batcher = batcher
        model = backend.info
        self._pipeline = Pipeline(
            [
                DecodeStage(model.input_size, s.box_padding, s.max_image_pixels, s.reduced_decode),
                CropStage(model.input_size, s.box_padding),
                PoseStage(batcher),
                ToImageStage(),
            ]
        )
        self.model, self.provider = model, backend.provider
        self.metrics.model_info.labels(model.name, model.version, backend.provider).set(1)
        self.metrics.queue_capacity.set(s.max_queue)
        self._not_ready = None
        log.info("ready: %s %s on %s", model.name, model.version, backend.provider)

    async def estimate(
        self, images: Sequence[ImageInput], options: PoseOptions, deadline: float
    ) -> list[ImagePoses]:
        """Poses of every person box (or whole image) of `images`, in order. Loading, draining
        or a refused GPU refuse new work (NotReady); a streak of failed batches does not: it
        only takes the replica out of rotation, and the next good batch ends it."""
        if self._not_ready is not None or self._pipeline is None:
            raise NotReady(f"not ready: {self._not_ready}")
        results = await self._pipeline.run(images, options, deadline)
        self.metrics.images.inc(len(results))
        self.metrics.persons.inc(sum(len(r.persons) for r in results))
        return results

    def readiness(self) -> str | None:
        """None when ready, else why not."""
        if self._not_ready is not None:
            return self._not_ready
        failures = self._batcher.consecutive_failures if self._batcher else 0
        if failures >= self.settings.failure_threshold:
            return f"the last {failures} inference batches failed"
        return None

    def begin_drain(self) -> None:
        """Readiness goes 503 and new work is refused; accepted work goes on."""
        self._not_ready = "shutting down"

    def stop(self) -> None:
        """Finish what the batcher accepted, then end it."""
        self.begin_drain()
        if self._batcher is not None:
            self._batcher.stop()
