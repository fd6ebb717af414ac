"""The ONNX contract's one reader: what a model is, or why it is not a dipr model."""

import json

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dipr.core import pose_contract
from dipr.core.errors import ModelError
from dipr.core.pose_contract import describe
from dipr.models.registry import DEFAULT_ONNX

METADATA = {
    pose_contract.NAME: "tiny",
    pose_contract.VERSION: "3",
    pose_contract.INPUT_SIZE: json.dumps([4, 2]),
    pose_contract.KEYPOINT_NAMES: json.dumps(["a", "b"]),
    pose_contract.SKELETON: json.dumps([[0, 1]]),
    pose_contract.DEBIAS: "true",
    pose_contract.BETA: "5.0",
    pose_contract.REGION: "person",
    pose_contract.WINDOW: "7",
}


def session(
    tmp_path,
    metadata: dict[str, str] = METADATA,
    input_name: str = pose_contract.INPUT,
    input_type: int = TensorProto.UINT8,
    outputs: tuple[str, ...] = pose_contract.REQUIRED_OUTPUTS,
) -> ort.InferenceSession:
    nodes = [helper.make_node("Identity", [input_name], [name]) for name in outputs]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, input_type, ["N", 2, 4, 3])],
        [helper.make_tensor_value_info(name, input_type, ["N", 2, 4, 3]) for name in outputs],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=10,  # what onnxruntime 1.31 reads (the onnx package writes newer)
    )
    model.ir_version = 10
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_a_model_following_the_contract_is_described(tmp_path):
    model = describe(session(tmp_path))
    assert (model.name, model.version, model.input_size) == ("tiny", "3", (4, 2))
    assert model.keypoint_names == ("a", "b") and model.skeleton == ((0, 1),)
    assert model.debias is True and model.outputs == pose_contract.REQUIRED_OUTPUTS
    assert model.description == "tiny β=5.0 person k=7"
    assert model.metadata == METADATA


def test_the_shipped_model_is_described():
    model = describe(ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"]))
    assert model.name == "movenet-thunder" and model.input_size == (256, 256)
    assert len(model.keypoint_names) == 17 and pose_contract.KEYPOINTS_OFFICIAL in model.outputs
    assert set(pose_contract.METADATA_KEYS) <= set(model.metadata)


def test_descriptive_keys_may_be_missing(tmp_path):
    metadata = {
        k: v
        for k, v in METADATA.items()
        if k not in (pose_contract.BETA, pose_contract.REGION, pose_contract.WINDOW)
    }
    assert describe(session(tmp_path, metadata)).description == "tiny β=? ?"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input_name": "pixels"}, "one uint8 input named 'image'"),
        ({"input_type": TensorProto.FLOAT}, "one uint8 input named 'image'"),
        (
            {"outputs": (pose_contract.KEYPOINTS, pose_contract.SCORES)},
            "lacks the output.*keypoints_raw",
        ),
        ({"metadata": {**METADATA, pose_contract.INPUT_SIZE: "[4]"}}, "metadata does not follow"),
        ({"metadata": {**METADATA, pose_contract.SKELETON: "bad"}}, "metadata does not follow"),
        (
            {"metadata": {k: v for k, v in METADATA.items() if k != pose_contract.NAME}},
            "metadata does not follow.*name",
        ),
    ],
)
def test_what_breaks_the_contract_is_named(tmp_path, changes, message):
    with pytest.raises(ModelError, match=message):
        describe(session(tmp_path, **changes))
