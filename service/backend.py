"""ONNX Runtime: load a model that follows the dipr contract, pick the provider, run batches."""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dipr.export import contract

log = logging.getLogger(__name__)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


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


def _providers(requested: str, device_id: int) -> list[str | tuple[str, dict[str, object]]]:
    available = ort.get_available_providers()
    use_cuda = requested == "cuda" or (requested == "auto" and CUDA in available)
    if not use_cuda:
        return [CPU]
    return [(CUDA, {"device_id": device_id}), CPU]


class OnnxBackend:
    def __init__(
        self, path: Path, provider: str = "auto", device_id: int = 0, intra_op_threads: int = 0
    ) -> None:
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = _providers(provider, device_id)
        wants_gpu = providers[0] != CPU
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as error:  # onnxruntime raises several unrelated types for bad files
            raise ModelError(f"onnxruntime cannot load {path}: {error}") from error
        self.provider = self.session.get_providers()[0]
        log.info("model %s on %s (asked: %s)", path, self.provider, provider)
        if wants_gpu and self.provider != CUDA:
            # onnxruntime logs the CUDA failure and quietly runs on CPU: refuse to do the same.
            raise ProviderUnavailable(
                f"CUDA was requested ({provider}) but onnxruntime runs on {self.provider}: "
                "check the CUDA and cuDNN libraries matching onnxruntime-gpu"
            )
        self._check_contract()
        self.info = ModelInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self._outputs = [o.name for o in self.session.get_outputs()]

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
        if self.provider == CUDA:
            # IOBinding: one host→device copy of the input and device→host of the outputs,
            # without Run()'s intermediate staging.
            binding = self.session.io_binding()
            binding.bind_cpu_input(contract.INPUT, np.ascontiguousarray(batch))
            for name in self._outputs:
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(self._outputs, {contract.INPUT: batch})
        return dict(zip(self._outputs, values, strict=True))

    def warm_up(self, batch_sizes: list[int]) -> None:
        """Run every batch size once so that no request pays for first-run allocations."""
        width, height = self.info.input_size
        for size in batch_sizes:
            self.infer(np.zeros((size, height, width, 3), np.uint8))
