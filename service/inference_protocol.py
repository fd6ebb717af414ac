"""The messages between front-end processes and the inference process, over a Unix socket.

Crops never travel here: they are in shared memory (`crop_slab`), and a request names them by
slot. Front-end → inference: one fixed 26-byte struct (kind, model, request id, first slot,
count, deadline). Inference → front-end: a 13-byte header (payload length, kind, request id) and
a payload: JSON for the greeting, status and errors; for a result a JSON list of the arrays'
names, dtypes and shapes followed by their raw bytes (a few hundred bytes per crop). Nothing is
pickled, so nothing is ever unpickled.

Deadlines are `time.monotonic()` values: on Linux CLOCK_MONOTONIC is one clock for every process
of the machine, so a deadline means the same instant on both sides.
"""

import json
import struct
from dataclasses import asdict
from typing import Any

import numpy as np

from dipr.core.detector_contract import DetectorInfo
from dipr.core.errors import DeadlineExceeded, DiprError, InferenceFailed, NotReady, Overloaded
from dipr.core.pose_contract import ModelInfo

# Front-end → inference.
CONTROL = struct.Struct("<BBQIId")  # kind, model, request id, first slot, count, deadline
SUBMIT, CANCEL, ATTACHED = 1, 2, 3
# Inference → front-end.
REPLY_HEADER = struct.Struct("<IBQ")  # payload bytes, kind, request id
HELLO, STATUS, RESULT, ERROR = 1, 2, 3, 4
_ARRAYS_HEADER = struct.Struct("<I")  # bytes of the JSON that describes a result's arrays

POSE, DETECTOR = 0, 1
MODEL_NAMES = {POSE: "pose", DETECTOR: "detector"}
# The largest reply a front-end accepts: a result of the largest batch is some kilobytes.
MAX_REPLY_BYTES = 64 * 1024 * 1024


def control(kind: int, request: int, model: int = 0, first: int = 0, count: int = 0,
            deadline: float = 0.0) -> bytes:  # fmt: skip
    return CONTROL.pack(kind, model, request, first, count, deadline)


def reply(kind: int, request: int, payload: bytes) -> bytes:
    return REPLY_HEADER.pack(len(payload), kind, request) + payload


def json_payload(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_arrays(outputs: dict[str, np.ndarray]) -> bytes:
    """A result's arrays as a JSON description and their bytes, in order."""
    described = [[name, values.dtype.str, list(values.shape)] for name, values in outputs.items()]
    header = json_payload(described)
    chunks = [np.ascontiguousarray(values).tobytes() for values in outputs.values()]
    return _ARRAYS_HEADER.pack(len(header)) + header + b"".join(chunks)


def decode_arrays(payload: bytes) -> dict[str, np.ndarray]:
    (length,) = _ARRAYS_HEADER.unpack_from(payload)
    start = _ARRAYS_HEADER.size
    described = json.loads(payload[start : start + length])
    offset = start + length
    outputs: dict[str, np.ndarray] = {}
    for name, dtype, shape in described:
        kind = np.dtype(dtype)
        if kind.hasobject:  # only plain numbers cross: never an object array
            raise ValueError(f"refused dtype {dtype} for {name}")
        count = int(np.prod(shape))
        values = np.frombuffer(payload, kind, count, offset).reshape(shape).copy()
        outputs[str(name)] = values
        offset += count * kind.itemsize
    return outputs


def encode_error(error: BaseException) -> bytes:
    if isinstance(error, DiprError):
        kind = type(error).__name__
        cause = getattr(error, "cause", None)
        return json_payload({"type": kind, "message": str(error), "cause": cause})
    message = f"inference failed: {type(error).__name__}: {error}"[:500]
    return json_payload({"type": "InferenceFailed", "message": message, "cause": None})


def decode_error(payload: bytes) -> DiprError:
    """The error the inference process answered with, as the domain error it was there."""
    fields = json.loads(payload)
    kind, message = fields.get("type"), str(fields.get("message", ""))
    if kind == "Overloaded":
        return Overloaded(message, cause=str(fields.get("cause") or "inference"))
    if kind == "DeadlineExceeded":
        return DeadlineExceeded(message)
    if kind == "NotReady":
        return NotReady(message)
    return InferenceFailed(message)


def model_info_from(fields: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        **{
            **fields,
            "input_size": tuple(fields["input_size"]),
            "keypoint_names": tuple(fields["keypoint_names"]),
            "skeleton": tuple(tuple(pair) for pair in fields["skeleton"]),
            "outputs": tuple(fields["outputs"]),
        }
    )


def detector_info_from(fields: dict[str, Any]) -> DetectorInfo:
    return DetectorInfo(
        **{
            **fields,
            "input_size": tuple(fields["input_size"]),
            "keypoint_names": tuple(fields["keypoint_names"]),
        }
    )


def info_fields(info: ModelInfo | DetectorInfo) -> dict[str, Any]:
    return asdict(info)
