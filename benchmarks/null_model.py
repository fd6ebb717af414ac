"""A null pose model: the pose contract of a real model (input `image` uint8 [N, H, W, 3], the
same outputs, dtypes and metadata) and almost no network, so that what a service spends around
the model can be measured on its own.

It is a real ONNX graph whose outputs are derived from the input, cheaply: the first K rows × 2
columns of the red channel become the keypoints (input pixels, 0–255), their larger value / 255
the scores. Built with `onnx.helper` into a file at bench time (the `export` extra installs onnx):
nothing binary is committed.
"""

from pathlib import Path

import onnxruntime as ort

from dipr.core import pose_contract
from dipr.core.pose_contract import ModelInfo

NULL_PREFIX = "null-"


def reference_info(model: Path) -> ModelInfo:
    """What the real model is (its contract's description), read without optimising it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return pose_contract.describe(session)


def write_null_model(reference: Path, path: Path) -> Path:
    """Write at `path` a null model with `reference`'s contract (its outputs, input size and
    metadata; the name prefixed with "null-", so /v1/model does not pass it off as the real one)."""
    from onnx import TensorProto, helper, save

    info = reference_info(reference)
    width, height = info.input_size
    keypoints = len(info.keypoint_names)
    if keypoints > height or width < 2:
        raise ValueError(f"input {width}×{height} too small for {keypoints} keypoints")
    point_outputs = [name for name in info.outputs if name != pose_contract.SCORES]
    nodes = [
        # [N, K, 2, 1]: K rows, 2 columns, the red channel; then [N, K, 2] as float32.
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["patch"]),
        helper.make_node("Squeeze", ["patch", "channel_axis"], ["patch_2d"]),
        helper.make_node("Cast", ["patch_2d"], ["points"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["points", "last_axis"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "per_255"], [pose_contract.SCORES]),
        *(helper.make_node("Identity", ["points"], [name]) for name in point_outputs),
    ]
    constants = [
        helper.make_tensor("starts", TensorProto.INT64, [3], [0, 0, 0]),
        helper.make_tensor("ends", TensorProto.INT64, [3], [keypoints, 2, 1]),
        helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]),
        helper.make_tensor("channel_axis", TensorProto.INT64, [1], [3]),
        helper.make_tensor("last_axis", TensorProto.INT64, [1], [2]),
        helper.make_tensor("per_255", TensorProto.FLOAT, [], [1 / 255]),
    ]
    float_ = TensorProto.FLOAT
    outputs = [
        helper.make_tensor_value_info(name, float_, ["batch", keypoints])
        if name == pose_contract.SCORES
        else helper.make_tensor_value_info(name, float_, ["batch", keypoints, 2])
        for name in info.outputs
    ]
    graph = helper.make_graph(
        nodes,
        "null_pose",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", height, width, 3])],
        outputs,
        initializer=constants,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=10,  # what onnxruntime 1.31 reads (the onnx package writes newer)
    )
    model.ir_version = 10  # what every onnxruntime ≥ 1.20 reads
    metadata = {**info.metadata, pose_contract.NAME: NULL_PREFIX + info.name}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path
