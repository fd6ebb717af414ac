"""ONNX Runtime: load a model that follows a dipr contract (pose or detector), pick the provider,
run batches."""

import ctypes
import functools
import logging
import os
import subprocess
import sys
import tempfile
import threading
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
# ONNX tensor types → numpy, for the OrtValues allocated ahead of time.
NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


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


def _unoptimised() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def _input_size(path: Path, describe: Describe[Info]) -> tuple[int, int]:
    """The model's input size alone, from an unoptimised CPU session (TensorRT's options need it
    before the real session exists)."""
    return describe(ort.InferenceSession(str(path), _unoptimised(), providers=[CPU])).input_size


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


def fixed_batch_session(
    path: Path,
    batch_size: int,
    providers: list[str | tuple[str, dict[str, object]]],
    options: ort.SessionOptions,
) -> ort.InferenceSession:
    """A session of the model for one batch size: the batch dimension fixed by name, so that
    every shape in the graph is static (ONNX Runtime then folds the shape arithmetic away, and
    a CUDA graph, which replays fixed shapes, can be captured)."""
    probe = ort.InferenceSession(str(path), _unoptimised(), providers=[CPU])
    batch_dimension = probe.get_inputs()[0].shape[0]
    if isinstance(batch_dimension, str):
        options.add_free_dimension_override_by_name(batch_dimension, batch_size)
    return ort.InferenceSession(str(path), options, providers=providers)


def cuda_graph_providers(device_id: int) -> list[str | tuple[str, dict[str, object]]]:
    """CUDA with graph capture: every Run() after the first ones replays the captured kernels
    (ONNX Runtime's constraints: all nodes on CUDA, fixed shapes, inputs and outputs bound at
    fixed device addresses, one thread at a time per session)."""
    return [(CUDA, {"device_id": device_id, "enable_cuda_graph": "1"}), CPU]


def pinned_memory(device_id: int) -> tuple[ort.OrtMemoryInfo | None, str]:
    """Page-locked host memory for CUDA device `device_id`, as ONNX Runtime's CUDA provider
    offers it (its HOST_ACCESSIBLE memory), or None and why not.

    A copy from pageable memory goes through the driver's own bounce buffer; from page-locked
    memory the GPU reads it directly (and faster). ONNX Runtime allocates it only through an
    OrtEpDevice: the CUDA provider library, registered with the environment, lists one per GPU
    with a shared allocator for each of its memories.
    """
    devices = _cuda_ep_devices()
    if not devices:
        library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
        if not library.is_file():
            return None, "this onnxruntime has no CUDA provider library"
        try:
            ort.register_execution_provider_library("dipr-cuda", str(library))
        except Exception as error:  # onnxruntime raises RuntimeError or its own Fail
            return None, f"onnxruntime cannot register {library.name}: {_first_line(error)}"
        devices = _cuda_ep_devices()
    by_id = [d for d in devices if d.ep_options.get("device_id") == str(device_id)]
    if by_id:
        device = by_id[0]
    elif device_id < len(devices):
        device = devices[device_id]  # listed in device order when no option names the id
    else:
        return None, f"onnxruntime lists no CUDA device {device_id}"
    memory = device.memory_info(ort.OrtDeviceMemoryType.HOST_ACCESSIBLE)
    if memory is None:
        return None, "onnxruntime's CUDA provider offers no host-accessible memory"
    why_not = allocation_problem(memory)
    return (None, why_not) if why_not else (memory, "")


def allocation_problem(memory: ort.OrtMemoryInfo) -> str:
    """Why ONNX Runtime cannot allocate host memory from `memory` ("" if it can): an allocation
    that would fail at warm-up fails here, once, and batches then take pageable memory."""
    try:
        host_array([1], np.uint8, memory)
    except Exception as error:  # onnxruntime's RuntimeError or Fail
        return f"onnxruntime cannot allocate its {memory.name} memory: {_first_line(error)}"
    return ""


@functools.cache  # once per process: the pose model and the detector each warm up with it
def pinned_memory_crash(device_id: int) -> str:
    """ "" when `pinned_memory` returns in a process of its own, else how that process ended.
    Registering the CUDA provider library with the environment is the one step of serving that
    runs nowhere but on a GPU: should it crash, the replica serves from pageable memory instead
    of crash-looping (about a second, once, at start-up)."""
    code = (
        "from dipr.service.backend import pinned_memory\n"
        f"memory, why = pinned_memory({int(device_id)})\n"
        "print(why or memory.name)"
    )
    try:
        probe = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "looking for page-locked memory took over 60 s"
    if probe.returncode != 0:
        lines = probe.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        return f"looking for page-locked memory ended its process ({probe.returncode}): {lines[-1]}"
    return ""


def _cuda_ep_devices() -> list[ort.OrtEpDevice]:
    return [device for device in ort.get_ep_devices() if device.ep_name == CUDA]


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def host_array(
    shape: list[int], dtype: type[np.generic], memory: ort.OrtMemoryInfo
) -> tuple[np.ndarray, ort.OrtValue]:
    """A numpy array over host memory that ONNX Runtime allocates from `memory` (a registered
    shared allocator's): the array is a view, so the OrtValue returned with it must outlive it."""
    owner = ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, memory_info=memory)
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    memory_view = (ctypes.c_ubyte * size).from_address(owner.data_ptr())
    return np.frombuffer(memory_view, dtype).reshape(shape), owner


class ResidentBatch:
    """One batch size's input and outputs allocated once, on the device the session runs on, and
    bound once: a batch costs one host→device copy of the input into the same memory
    (`update_inplace`), the run, and one device→host copy of the outputs. Fixed addresses are
    also what a CUDA graph replays. One batch at a time: `run` returns None when busy.

    `staging`: host memory (page-locked, from `pinned_memory`) that every batch is written into
    before its copy to the device; fewer rows than the batch size are padded there with zeros.
    Without it, a full batch is copied from where it is, and a short one padded in a new array.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        batch_size: int,
        device: str,
        device_id: int = 0,
        staging: ort.OrtMemoryInfo | None = None,
    ) -> None:
        self.session = session
        self.batch_size = batch_size
        (model_input,) = session.get_inputs()
        input_shape, input_type = self._shape(model_input), NUMPY_TYPES[model_input.type]
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(
            input_shape, input_type, device, device_id
        )
        self.staging: np.ndarray | None = None
        if staging is not None:
            self.staging, self._staging_owner = host_array(input_shape, input_type, staging)
            self.staging[:] = 0
        self.binding = session.io_binding()
        self.binding.bind_ortvalue_input(model_input.name, self.input)
        self.output_names = [output.name for output in session.get_outputs()]
        # Kept referenced: the binding holds the addresses, these objects own the memory.
        self.outputs = [
            ort.OrtValue.ortvalue_from_shape_and_type(
                self._shape(output), NUMPY_TYPES[output.type], device, device_id
            )
            for output in session.get_outputs()
        ]
        for name, value in zip(self.output_names, self.outputs, strict=True):
            self.binding.bind_ortvalue_output(name, value)
        self._busy = threading.Lock()
        self._staged_rows = 0  # rows of the staging memory that the last batch wrote

    def _shape(self, argument: ort.NodeArg) -> list[int]:
        """The argument's shape at this batch size: the leading dimension is the batch; any
        other dimension must be fixed, else nothing can be allocated ahead of time."""
        shape = [self.batch_size, *argument.shape[1:]]
        if not all(isinstance(size, int) for size in shape):
            raise ValueError(f"{argument.name} has a dynamic dimension besides the batch: {shape}")
        return shape

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray] | None:
        """batch: at most `batch_size` rows (zero rows pad it) → every output, one row per batch
        row (host copies), or None if another thread is running this batch size now."""
        rows = len(batch)
        if not 0 < rows <= self.batch_size:
            raise ValueError(f"a batch of {rows} rows for buffers of {self.batch_size}")
        if not self._busy.acquire(blocking=False):
            return None
        try:
            self.input.update_inplace(self._host_input(batch))
            # The copy into device memory may still be in flight on another CUDA stream than
            # the session's: the device waits for it before the run, and for the run before
            # the outputs are read (both no-ops on the CPU).
            self.binding.synchronize_inputs()
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
            # Copies: the bound memory is overwritten by the next batch.
            values = [np.array(value)[:rows] for value in self.binding.copy_outputs_to_cpu()]
        finally:
            self._busy.release()
        return dict(zip(self.output_names, values, strict=True))

    def _host_input(self, batch: np.ndarray) -> np.ndarray:
        """The input's `batch_size` rows in host memory: `batch`, then zeros."""
        rows = len(batch)
        if self.staging is None:
            if rows == self.batch_size:
                return np.ascontiguousarray(batch)
            padding = np.zeros((self.batch_size - rows, *batch.shape[1:]), batch.dtype)
            return np.concatenate([batch, padding])
        self.staging[:rows] = batch
        if self._staged_rows > rows:  # rows a larger batch left there: zeros again
            self.staging[rows : self._staged_rows] = 0
        self._staged_rows = rows
        return self.staging


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
        cuda_graphs: bool = False,
        pinned_buffers: bool = True,
    ) -> None:
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        self._path = path
        self._device_id = device_id
        self._intra_op_threads = intra_op_threads
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
        # Where inputs and outputs of the warmed batch sizes live between batches (ONNX
        # Runtime's device name), or None: plain `run` (CPU, where binding would copy the same).
        self.io_device: str | None = "cuda" if self.provider in GPU_PROVIDERS else None
        self.cuda_graphs = cuda_graphs and self.provider == CUDA
        if cuda_graphs and not self.cuda_graphs:
            log.warning("CUDA graphs are for the CUDA provider: not used on %s", self.provider)
        self._resident: dict[int, ResidentBatch] = {}
        self._pinned_buffers = pinned_buffers
        # Set by warm-up: whether the warmed batches are staged in page-locked host memory, and
        # if not (on a GPU), why.
        self.pinned: bool = False
        self.pinned_note = ""

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
        resident = self._resident.get(bucket)
        if resident is not None:
            outputs = resident.run(batch)  # padded to `bucket` in its own host memory
            if outputs is not None:
                return outputs
        # A size that was not warmed, or its buffers busy with another worker's batch: `run`
        # copies the input to the device and the outputs back itself.
        if bucket > rows:
            padding = np.zeros((bucket - rows, *batch.shape[1:]), batch.dtype)
            outputs = self._run(self.session, np.concatenate([batch, padding]))
            return {name: values[:rows] for name, values in outputs.items()}
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
        if self.io_device is not None:
            self.batch_buckets = tuple(sorted(batch_sizes))
            self._keep_resident(self.io_device, self.batch_buckets)
        if self._alongside is not None:
            for size in sorted({min(size, alongside_batch_size) for size in batch_sizes} - {0}):
                self.infer_alongside(np.zeros((size, height, width, 3), np.uint8))

    def _keep_resident(self, device: str, batch_sizes: tuple[int, ...]) -> None:
        """Inputs and outputs of every warmed batch size allocated on `device` once, each run
        once (with CUDA graphs: on a session of its own, which the runs capture)."""
        width, height = self.info.input_size
        staging = self._staging_memory(device)
        resident = {}
        for size in batch_sizes:
            zeros = np.zeros((size, height, width, 3), np.uint8)
            if not self.cuda_graphs:
                resident[size] = ResidentBatch(self.session, size, device, self._device_id, staging)
                resident[size].run(zeros)
                continue
            try:
                options = session_options(self._intra_op_threads, gpu=True)
                providers = cuda_graph_providers(self._device_id)
                session = fixed_batch_session(self._path, size, providers, options)
                resident[size] = ResidentBatch(session, size, device, self._device_id, staging)
                # ONNX Runtime captures the graph after its first regular run(s): a few runs
                # here, so that no request pays for the capture.
                for _ in range(3):
                    resident[size].run(zeros)
            except Exception as error:  # e.g. a node left on the CPU: nothing to capture
                raise ModelError(
                    f"DIPR_CUDA_GRAPHS: onnxruntime cannot run {self._path} at batch {size} "
                    f"as a CUDA graph: {error}"
                ) from error
        self._resident = resident  # whole, at once: batches may already be running

    def _staging_memory(self, device: str) -> ort.OrtMemoryInfo | None:
        """Page-locked host memory for the batches on their way to a CUDA device, when the
        provider offers it (else pageable: slower copies, the same results)."""
        if device != "cuda" or not self._pinned_buffers:
            self.pinned_note = "" if device != "cuda" else "DIPR_PINNED_BUFFERS is off"
            return None
        crash = pinned_memory_crash(self._device_id)
        memory, why = (None, crash) if crash else pinned_memory(self._device_id)
        self.pinned, self.pinned_note = memory is not None, why
        if memory is None:
            log.warning("batches are copied to the GPU from pageable memory: %s", why)
        else:
            log.info("batches are staged in page-locked host memory (%s)", memory.name)
        return memory
