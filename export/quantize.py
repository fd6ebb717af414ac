"""Static int8 quantisation of an exported model's network (ONNX Runtime's tools, QDQ format),
everything else kept in fp32.

Quantised: the nodes on a path from one convolution to another, and the convolutions (the
backbone and its heads' layers: Conv, Clip, Add, Relu, Resize, … as each network has them). Kept
fp32:
- the decode and the paper's head: every node after the last convolution on its path (sigmoid,
  soft-argmax, debiasing, the published decode), as the product's card requires;
- the input's preparation and the stem convolution that reads the image: quantising the stem cost
  MoveNet Thunder 0.008 mean OKS on the dev set (0.840 → 0.832), keeping it fp32 costs 0.0002.
Weights are int8 per output channel, activations uint8 (ONNX Runtime's x86 default, "U8S8").
"""

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from dipr.core import pose_contract
from dipr.export.calibration import CalibrationError, CalibrationSet

CONVOLUTIONS = frozenset({"Conv", "ConvTranspose"})
Step = Callable[[onnx.NodeProto], Iterator[onnx.NodeProto]]


def quantised_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes to quantise (see the module docstring)."""
    nodes = list(model.graph.node)
    producer = {output: node for node in nodes for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)

    def upstream(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
        return (producer[name] for name in node.input if name in producer)

    def downstream(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
        return (consumer for name in node.output for consumer in consumers[name])

    convolutions = [node for node in nodes if node.op_type in CONVOLUTIONS]
    convolution_names = {node.name for node in convolutions}
    above = {c.name: _reachable(upstream(c), upstream) for c in convolutions}
    below = _reachable((n for c in convolutions for n in downstream(c)), downstream)
    between = set().union(*above.values()) & below
    stems = {name for name, ancestors in above.items() if not ancestors & convolution_names}
    return (between | convolution_names) - stems


def _reachable(start: Iterable[onnx.NodeProto], step: Step) -> set[str]:
    """Names of the nodes reached from `start` (included) by repeating `step`."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node.name not in seen:
            seen.add(node.name)
            stack.extend(step(node))
    return seen


class _Inputs(CalibrationDataReader):
    """The calibration inputs, one at a time (the model's batch axis is dynamic)."""

    def __init__(self, inputs: np.ndarray) -> None:
        self._batches = iter(inputs[i : i + 1] for i in range(len(inputs)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {pose_contract.INPUT: batch}


def quantize_int8(fp32: Path, output: Path, calibration: CalibrationSet) -> None:
    """Write the int8 model of the fp32 one at `output`, its metadata saying how it was made
    (precision, and the calibration inputs' count and hash); CalibrationError when the inputs
    give no usable ranges."""
    model = onnx.load(fp32)
    unnamed = [node.op_type for node in model.graph.node if not node.name]
    if unnamed:  # exclusions go by name
        raise ValueError(f"{fp32} has {len(unnamed)} unnamed node(s): cannot keep the head fp32")
    quantised = quantised_nodes(model)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the tool's advice to pre-process: our graph is optimised
    try:
        quantize_static(
            fp32,
            output,
            _Inputs(calibration.inputs),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=sorted(
                {node.op_type for node in model.graph.node if node.name in quantised}
            ),
            nodes_to_exclude=[node.name for node in model.graph.node if node.name not in quantised],
            # Ranges from the 0.001st to the 99.999th percentile: the global minimum and maximum
            # let rare outliers widen the ranges (dev set: 0.816–0.840 mean OKS depending on the
            # calibration photos, against 0.828–0.835 this way).
            calibrate_method=CalibrationMethod.Percentile,
        )
    except ValueError as error:
        # numpy's histogram, when an activation barely varies over the whole set (synthetic
        # patterns rather than photos).
        raise CalibrationError(
            f"no activation ranges from the {calibration.size} calibration inputs of "
            f"{calibration.folder} ({error}): calibrate on photos like those served"
        ) from error
    finally:
        root.setLevel(level)
    int8 = onnx.load(output)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    metadata |= {
        pose_contract.PRECISION: "int8",
        pose_contract.CALIBRATION_INPUTS: str(calibration.size),
        pose_contract.CALIBRATION_SHA256: calibration.sha256,
    }
    set_metadata(int8, metadata)
    onnx.save(int8, output)


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
