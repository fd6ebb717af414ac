"""ONNX Runtime: load a model that follows a dipr contract (pose or detector), pick the provider,
run batches."""

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import onnxruntime as ort

from dipr.core import pose_contract
from dipr.core.errors import ModelError
from dipr.core.pose_contract import Session

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)


class Described(Protocol):
    """What the backend needs of a contract's description of a model."""

    @property
    def input_size(self) -> tuple[int, int]: ...


Info = TypeVar("Info", bound=Described)
Describe = Callable[[Session], Info]


class ProviderUnavailable(Exception):
    """A GPU was asked for (or found) and onnxruntime does not use it: never serve on CPU then."""


@dataclass(frozen=True)
class TensorrtOptions:
    """TensorRT builds one engine per model, GPU and set of shapes, minutes for a large network:
    cache it on disk, and give it one profile that covers every batch the batcher can form.

    Precision is the model's (`dipr export --fp16`: backbone fp16, head fp32). TensorRT's own fp16
    switch stays off: it would let TensorRT run the head's exp and log-sum-exp in fp16 as well.
    """

    cache_dir: Path = Path(tempfile.gettempdir()) / "dipr-tensorrt"
    max_batch_size: int = 16

    @property
    def engine_dir(self) -> Path:
        # One folder per profile: an engine built for other batch sizes is never picked up.
        return self.cache_dir / f"batch-1-{self.max_batch_size}"

    def provider_options(
        self, input_name: str, input_size: tuple[int, int], device_id: int
    ) -> dict[str, object]:
        width, height = input_size

        def shape(batch: int) -> str:
            return f"{input_name}:{batch}x{height}x{width}x3"

        return {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.engine_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.cache_dir),
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(self.max_batch_size),
            "trt_profile_max_shapes": shape(self.max_batch_size),
        }


def warm_up_sizes(largest: int) -> list[int]:
    """The batch sizes to run once at start: powers of two up to the largest batch, and it."""
    sizes = [1]
    while sizes[-1] * 2 <= largest:
        sizes.append(sizes[-1] * 2)
    return sorted({*sizes, largest})


def _input_size(path: Path, describe: Describe[Info]) -> tuple[int, int]:
    """The model's input size alone, from an unoptimised CPU session (TensorRT's options need it
    before the real session exists)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return describe(ort.InferenceSession(str(path), options, providers=[CPU])).input_size


def _providers(
    requested: str,
    path: Path,
    device_id: int,
    tensorrt: TensorrtOptions | None,
    describe: Describe[Info],
) -> list[str | tuple[str, dict[str, object]]]:
    available = ort.get_available_providers()
    cuda = (CUDA, {"device_id": device_id})
    if requested == "tensorrt":
        tensorrt = tensorrt or TensorrtOptions()
        tensorrt.engine_dir.mkdir(parents=True, exist_ok=True)
        trt_options = tensorrt.provider_options(
            pose_contract.INPUT, _input_size(path, describe), device_id
        )
        # Nodes TensorRT cannot take run on CUDA; CPU only for what CUDA lacks.
        return [(TENSORRT, trt_options), cuda, CPU]
    if requested == "cuda" or (requested == "auto" and CUDA in available):
        return [cuda, CPU]
    return [CPU]


def session_options(intra_op_threads: int, gpu: bool = False) -> ort.SessionOptions:
    """`intra_op_threads` 0: ONNX Runtime's choice on CPU (a thread per core); on a GPU one
    thread that does not spin: the few nodes left on the CPU need no more, and a spinning pool
    of a thread per core would compete with JPEG decoding for nothing."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if gpu and intra_op_threads == 0:
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        options.intra_op_num_threads = intra_op_threads
    return options


class OnnxBackend(Generic[Info]):
    """One model in ONNX Runtime; `describe` is its contract's reader and checker (the pose
    model's by default), whose description becomes `info`."""

    def __init__(
        self,
        path: Path,
        provider: str = "auto",
        device_id: int = 0,
        intra_op_threads: int = 0,
        tensorrt: TensorrtOptions | None = None,
        describe: Describe[Info] = pose_contract.describe,  # type: ignore[assignment]
    ) -> None:
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        self._path = path
        try:
            providers = _providers(provider, path, device_id, tensorrt, describe)
            wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
            options = session_options(intra_op_threads, gpu=wanted in GPU_PROVIDERS)
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"onnxruntime cannot load {path}: {error}") from error
        self.provider = self.session.get_providers()[0]
        log.info("model %s on %s (asked: %s)", path, self.provider, provider)
        if wanted != CPU and self.provider != wanted:
            what = "TensorRT" if wanted == TENSORRT else "CUDA"
            if provider == "auto":
                # onnxruntime-gpu on a machine without a (usable) GPU: auto means "else CPU".
                log.warning(
                    "auto: onnxruntime offers %s but runs on %s (no usable GPU): serving on CPU",
                    what,
                    self.provider,
                )
                self.session = ort.InferenceSession(
                    str(path), session_options(intra_op_threads), providers=[CPU]
                )
            else:
                # onnxruntime logs the GPU failure and quietly runs on the next provider: when a
                # GPU was asked for by name, refuse to.
                raise ProviderUnavailable(
                    f"{what} was requested ({provider}) but onnxruntime runs on {self.provider}: "
                    "check the CUDA, cuDNN (and TensorRT) libraries matching onnxruntime-gpu"
                )
        self.info: Info = describe(self.session)
        self._outputs = [output.name for output in self.session.get_outputs()]
        self._alongside: ort.InferenceSession | None = None
        # The batch sizes a batch is padded up to (set by warm-up on a GPU): cuDNN tunes its
        # algorithms per shape, so a batch of 3 or 12 first seen in the middle of serving would
        # stall it; padded to a warmed size, no new shape ever runs. Empty: no padding (CPU,
        # whose cost grows with every row).
        self.batch_buckets: tuple[int, ...] = ()

    def add_alongside_session(self, threads: int) -> None:
        """CPU: a second session of the same model with `threads` intra-op threads, for batches
        run while others run. ONNX Runtime's parallel operators leave cores idle between
        operators; k streams on 1/k of the cores each keep them busy (`infer_alongside`)."""
        if self.provider != CPU:
            raise ValueError(f"alongside sessions are for CPU, not {self.provider}")
        options = session_options(threads)
        self._alongside = ort.InferenceSession(str(self._path), options, providers=[CPU])

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """batch: uint8 [N, H, W, 3] → every model output, N rows each."""
        rows = len(batch)
        bucket = next((size for size in self.batch_buckets if size >= rows), rows)
        if bucket > rows:
            padding = np.zeros((bucket - rows, *batch.shape[1:]), batch.dtype)
            outputs = self._infer_rows(np.concatenate([batch, padding]))
            return {name: values[:rows] for name, values in outputs.items()}
        return self._infer_rows(batch)

    def _infer_rows(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.provider in GPU_PROVIDERS:
            # IOBinding: one host→device copy of the input and device→host of the outputs,
            # without Run()'s intermediate staging.
            binding = self.session.io_binding()
            binding.bind_cpu_input(pose_contract.INPUT, np.ascontiguousarray(batch))
            for name in self._outputs:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
            return dict(zip(self._outputs, values, strict=True))
        return self._run(self.session, batch)

    @property
    def has_alongside_session(self) -> bool:
        return self._alongside is not None

    def infer_alongside(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Like `infer`, on the alongside session when there is one."""
        if self._alongside is None:
            return self.infer(batch)
        return self._run(self._alongside, batch)

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(self._outputs, {pose_contract.INPUT: batch})
        return dict(zip(self._outputs, values, strict=True))

    def configure_workers(self, workers: int, intra_op_threads: int) -> int:
        """How many batches run at once (0: 2 on CPU, 1 on GPU). On CPU with several, batches
        that run side by side get an alongside session with their share of the cores."""
        workers = workers or (2 if self.provider == CPU else 1)
        if self.provider == CPU and workers > 1:
            cores = intra_op_threads or os.cpu_count() or 1
            self.add_alongside_session(max(1, cores // workers))
        return workers

    def warm_up(self, batch_sizes: list[int], alongside_batch_size: int = 0) -> None:
        """Run every batch size once so that no request pays for first-run allocations (on the
        alongside session only up to the largest batch it will run: its memory grows with it)."""
        width, height = self.info.input_size
        for size in batch_sizes:
            self.infer(np.zeros((size, height, width, 3), np.uint8))
        if self.provider in GPU_PROVIDERS:
            self.batch_buckets = tuple(sorted(batch_sizes))
        if self._alongside is not None:
            for size in sorted({min(size, alongside_batch_size) for size in batch_sizes} - {0}):
                self.infer_alongside(np.zeros((size, height, width, 3), np.uint8))
