"""ONNX Runtime: load a model that follows the dipr contract, pick the provider, run batches."""

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dipr.export import contract

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)


class ModelError(Exception):
    """The model file is missing or does not follow the contract."""


class ProviderUnavailable(Exception):
    """A GPU was asked for (or found) and onnxruntime does not use it: never serve on CPU then."""


@dataclass(frozen=True)
class ModelInfo:
    """What the service needs to know about a model, read from its ONNX metadata."""

    name: str
    version: str
    input_size: tuple[int, int]  # (width, height)
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    debias: bool
    metadata: dict[str, str]

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "ModelInfo":
        try:
            width, height = (int(v) for v in json.loads(metadata[contract.INPUT_SIZE]))
            names = tuple(str(n) for n in json.loads(metadata[contract.KEYPOINT_NAMES]))
            skeleton = tuple((int(a), int(b)) for a, b in json.loads(metadata[contract.SKELETON]))
            return cls(
                name=metadata[contract.NAME],
                version=metadata[contract.VERSION],
                input_size=(width, height),
                keypoint_names=names,
                skeleton=skeleton,
                debias=metadata[contract.DEBIAS] == "true",
                metadata=dict(metadata),
            )
        except (KeyError, ValueError, TypeError) as error:
            raise ModelError(f"model metadata does not follow the dipr contract: {error!r}") from (
                error
            )


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


def _read_info(path: Path) -> ModelInfo:
    """The metadata alone, from an unoptimised CPU session (TensorRT's options need the input
    size before the real session exists)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=[CPU])
    return ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map)


def _providers(
    requested: str, path: Path, device_id: int, tensorrt: TensorrtOptions | None
) -> list[str | tuple[str, dict[str, object]]]:
    available = ort.get_available_providers()
    cuda = (CUDA, {"device_id": device_id})
    if requested == "tensorrt":
        tensorrt = tensorrt or TensorrtOptions()
        tensorrt.engine_dir.mkdir(parents=True, exist_ok=True)
        trt_options = tensorrt.provider_options(
            contract.INPUT, _read_info(path).input_size, device_id
        )
        # Nodes TensorRT cannot take run on CUDA; CPU only for what CUDA lacks.
        return [(TENSORRT, trt_options), cuda, CPU]
    if requested == "cuda" or (requested == "auto" and CUDA in available):
        return [cuda, CPU]
    return [CPU]


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class OnnxBackend:
    def __init__(
        self,
        path: Path,
        provider: str = "auto",
        device_id: int = 0,
        intra_op_threads: int = 0,
        tensorrt: TensorrtOptions | None = None,
    ) -> None:
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        self._path = path
        options = _session_options(intra_op_threads)
        try:
            providers = _providers(provider, path, device_id, tensorrt)
            wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"onnxruntime cannot load {path}: {error}") from error
        self.provider = self.session.get_providers()[0]
        log.info("model %s on %s (asked: %s)", path, self.provider, provider)
        if wanted != CPU and self.provider != wanted:
            # onnxruntime logs the GPU failure and quietly runs on the next provider: refuse to.
            what = "TensorRT" if wanted == TENSORRT else "CUDA"
            raise ProviderUnavailable(
                f"{what} was requested ({provider}) but onnxruntime runs on {self.provider}: "
                "check the CUDA, cuDNN (and TensorRT) libraries matching onnxruntime-gpu"
            )
        self._check_contract()
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._alongside: ort.InferenceSession | None = None

    def add_alongside_session(self, threads: int) -> None:
        """CPU: a second session of the same model with `threads` intra-op threads, for batches
        run while others run. ONNX Runtime's parallel operators leave cores idle between
        operators; k streams on 1/k of the cores each keep them busy (`infer_alongside`)."""
        if self.provider != CPU:
            raise ValueError(f"alongside sessions are for CPU, not {self.provider}")
        options = _session_options(threads)
        self._alongside = ort.InferenceSession(str(self._path), options, providers=[CPU])

    def _check_contract(self) -> None:
        inputs = self.session.get_inputs()
        (first, *others) = inputs
        if others or first.name != contract.INPUT or first.type != "tensor(uint8)":
            raise ModelError(f"the model must take one uint8 input named {contract.INPUT!r}")
        outputs = {o.name for o in self.session.get_outputs()}
        missing = [name for name in contract.REQUIRED_OUTPUTS if name not in outputs]
        if missing:
            raise ModelError(f"the model lacks the outputs {missing}")

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """batch: uint8 [N, H, W, 3] → every model output, N rows each."""
        if self.provider in GPU_PROVIDERS:
            # IOBinding: one host→device copy of the input and device→host of the outputs,
            # without Run()'s intermediate staging.
            binding = self.session.io_binding()
            binding.bind_cpu_input(contract.INPUT, np.ascontiguousarray(batch))
            for name in self._outputs:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
            return dict(zip(self._outputs, values, strict=True))
        return self._run(self.session, batch)

    def infer_alongside(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Like `infer`, on the alongside session when there is one."""
        if self._alongside is None:
            return self.infer(batch)
        return self._run(self._alongside, batch)

    def _run(self, session: ort.InferenceSession, batch: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(self._outputs, {contract.INPUT: batch})
        return dict(zip(self._outputs, values, strict=True))

    def warm_up(self, batch_sizes: list[int], alongside_batch_size: int = 0) -> None:
        """Run every batch size once so that no request pays for first-run allocations (on the
        alongside session only up to the largest batch it will run: its memory grows with it)."""
        width, height = self.info.input_size
        for size in batch_sizes:
            self.infer(np.zeros((size, height, width, 3), np.uint8))
        if self._alongside is not None:
            for size in sorted({min(size, alongside_batch_size) for size in batch_sizes} - {0}):
                self.infer_alongside(np.zeros((size, height, width, 3), np.uint8))


def configure_workers(backend: OnnxBackend, workers: int, intra_op_threads: int) -> int:
    """How many batches run at once (0: 2 on CPU, 1 on GPU). On CPU with several, batches that
    run side by side get an alongside session with their share of the cores."""
    workers = workers or (2 if backend.provider == CPU else 1)
    if backend.provider == CPU and workers > 1:
        cores = intra_op_threads or os.cpu_count() or 1
        backend.add_alongside_session(max(1, cores // workers))
    return workers
