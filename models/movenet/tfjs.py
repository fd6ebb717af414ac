"""Read the weights of a TensorFlow.js graph model (model.json + .bin shards) into numpy arrays.

The .bin shards are the weights of `weightsManifest` concatenated in order; quantised tensors are
stored in their quantised dtype (here float16) and widened back to their original dtype.
"""

import json
from pathlib import Path

import numpy as np

_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "bool": np.bool_,
}


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
