"""The models and their batchers: the pose model and, unless detection is off, the person detector,
each in ONNX Runtime behind a batcher, warmed up before they count as loaded.

`dipr serve` runs this in its one process (the CPU layout) or in the inference process that its
front-end processes feed (DIPR_FRONTEND_PROCESSES): either way, what submits crops sees a
batcher's `submit`.
"""

import logging
from pathlib import Path

from dipr.core import detector_contract, pose_contract
from dipr.core.detector_contract import DetectorInfo
from dipr.core.errors import ModelError
from dipr.core.pose_contract import ModelInfo
from dipr.service.backend import (
    Describe,
    Info,
    OnnxBackend,
    ProviderUnavailable,
    TensorrtOptions,
    warm_up_sizes,
)
from dipr.service.batcher import Batcher, Occupancy
from dipr.service.metrics import ServiceMetrics
from dipr.service.settings import Settings

log = logging.getLogger("dipr.service")


class LocalInference:
    """Both models in this process. After `load`, `not_ready` is None and `pose` (and `detector`
    unless detection is off) take crops; else `not_ready` says why."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.pose_info: ModelInfo | None = None
        self.detector_info: DetectorInfo | None = None
        self.provider: str | None = None
        self.pose: Batcher | None = None
        self.detector: Batcher | None = None
        self.not_ready: str | None = "loading the models"
        self._batchers: list[Batcher] = []
        # Both models' batches run on the same device: a batch is alone only if no batch of
        # either model runs.
        self._occupancy = Occupancy()

    def load(self) -> None:
        """Load the models, warm them up, start batching; blocking. A model or provider that
        cannot serve leaves `not_ready` set to the reason."""
        try:
            pose, self.pose = self._load_pose()
            if self.settings.detect:
                detector, self.detector = self._load_detector()
                self.detector_info = detector.info
                self._register(detector, "detector")
        except (ModelError, ProviderUnavailable) as error:
            log.error("not ready: %s", error)
            self.not_ready = str(error)
            self.stop()
            return
        except Exception as error:  # ONNX Runtime at warm-up: out of memory, cuDNN missing, …
            # Up and unready with the reason, rather than a process that crash-loops.
            log.exception("not ready: the models failed to warm up")
            self.not_ready = f"warm-up failed: {type(error).__name__}: {error}"[:500]
            self.stop()
            return
        self.pose_info, self.provider = pose.info, pose.provider
        self._register(pose, "pose")
        self.not_ready = None

    def readiness(self) -> str | None:
        """None when both models serve, else why not (loading, failed, or failing batches)."""
        if self.not_ready is not None:
            return self.not_ready
        failures = max((b.consecutive_failures for b in self._batchers), default=0)
        if failures >= self.settings.failure_threshold:
            return f"the last {failures} inference batches failed"
        return None

    def stop(self) -> None:
        """Finish what the batchers accepted, then end them."""
        for batcher in self._batchers:
            batcher.stop()

    def _load_pose(self) -> tuple[OnnxBackend[ModelInfo], Batcher]:
        s = self.settings
        backend: OnnxBackend[ModelInfo] = self._backend(s.model_path, s.max_batch_size)
        return backend, self._batcher(backend, "pose", s.max_batch_size, s.max_queue)

    def _load_detector(self) -> tuple[OnnxBackend[DetectorInfo], Batcher]:
        s = self.settings
        backend: OnnxBackend[DetectorInfo] = self._backend(
            s.detector_path, s.detector_max_batch_size, detector_contract.describe
        )
        limits = (s.detector_max_batch_size, s.detector_max_queue)
        return backend, self._batcher(backend, "detector", *limits)

    def _backend(
        self,
        path: Path,
        max_batch_size: int,
        describe: Describe[Info] = pose_contract.describe,  # type: ignore[assignment]
    ) -> OnnxBackend[Info]:
        """A model's session with the service's provider, threads, TensorRT cache and graphs."""
        s = self.settings
        return OnnxBackend(
            path,
            s.provider,
            s.device_id,
            s.intra_op_threads,
            TensorrtOptions(s.tensorrt_cache_dir, max_batch_size),
            describe=describe,
            cuda_graphs=s.cuda_graphs,
            pinned_buffers=s.pinned_buffers,
        )

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
