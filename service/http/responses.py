"""The JSON the service answers with (these models are also its OpenAPI schema), and how a
pipeline's results become it."""

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dipr.core.detector_contract import DetectorInfo
from dipr.core.pose_contract import ModelInfo
from dipr.service.pipeline import ImagePoses, PersonPose

# The OpenAPI examples (what /docs shows as an answer): real output of the default model, rounded.
# POST /pose with tests/fixtures/photos/astronaut.jpg (512 × 512), no boxes: the detector finds one
# person. Keypoints may lie outside the image (below it, here) when the model places them there.
_ASTRONAUT_KEYPOINTS = [
    ("nose", 223.2, 124.6, 0.79),
    ("left_eye", 248.6, 100.9, 0.81),
    ("right_eye", 202.1, 99.3, 0.92),
    ("left_ear", 273.1, 118.7, 0.88),
    ("right_ear", 175.9, 113.8, 0.74),
    ("left_shoulder", 323.6, 271.2, 0.71),
    ("right_shoulder", 98.2, 257.4, 0.80),
    ("left_elbow", 325.7, 437.5, 0.22),
    ("right_elbow", 63.6, 425.4, 0.56),
    ("left_wrist", 304.4, 474.3, 0.13),
    ("right_wrist", 148.6, 499.4, 0.41),
    ("left_hip", 274.3, 508.0, 0.67),
    ("right_hip", 136.2, 506.7, 0.50),
    ("left_knee", 325.7, 513.2, 0.02),
    ("right_knee", 142.0, 517.6, 0.06),
    ("left_ankle", 154.5, 510.8, 0.02),
    ("right_ankle", 220.0, 502.5, 0.03),
]
_INPUT_SIZE = [256, 256]
_BOX = [17.3, 11.4, 361.3, 508.7]
_SKELETON = [
    [15, 13], [13, 11], [16, 14], [14, 12], [11, 12], [5, 11], [6, 12], [5, 6], [5, 7], [6, 8],
    [7, 9], [8, 10], [1, 2], [0, 1], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6],
]  # fmt: skip
POSE_EXAMPLE: dict[str, Any] = {
    "model": {"name": "movenet-thunder", "version": "1", "input_size": _INPUT_SIZE, "debias": True},
    "results": [
        {
            "image": {"width": 512, "height": 512},
            "persons": [
                {
                    "box": _BOX,
                    "box_score": 0.51,
                    "score": 0.49,
                    "keypoints": [
                        {"name": name, "x": x, "y": y, "score": score}
                        for name, x, y, score in _ASTRONAUT_KEYPOINTS
                    ],
                }
            ],
        }
    ],
}
# GET /v1/model of the default service on CPU; each `metadata` cut to a few of its entries.
MODEL_EXAMPLE: dict[str, Any] = {
    "name": "movenet-thunder",
    "version": "1",
    "input_size": _INPUT_SIZE,
    "keypoint_names": [name for name, *_ in _ASTRONAUT_KEYPOINTS],
    "skeleton": _SKELETON,
    "debias": True,
    "provider": "CPUExecutionProvider",
    "metadata": {"name": "movenet-thunder", "debias_mode": "paper", "precision": "fp32"},
    "detector": {
        "name": "movenet-multipose",
        "version": "1",
        "input_size": _INPUT_SIZE,
        "max_persons": 6,
        "metadata": {"role": "person_detector", "letterbox": "centred", "precision": "fp32"},
    },
}


class ModelSummary(BaseModel):
    name: str
    version: str
    input_size: tuple[int, int] = Field(
        description="network input (width, height)", examples=[_INPUT_SIZE]
    )
    debias: bool = Field(description="keypoints carry the closed-form debiasing")


class Keypoint(BaseModel):
    name: str
    x: float = Field(description="column, image pixels (centre of the first pixel is 0)")
    y: float = Field(description="row, image pixels")
    score: float = Field(ge=0, le=1, description="the model's confidence that the joint is here")
    x_raw: float | None = Field(None, description="uncorrected soft-argmax x (with ?raw=true)")
    y_raw: float | None = Field(None, description="uncorrected soft-argmax y (with ?raw=true)")


class PersonResult(BaseModel):
    box: tuple[float, float, float, float] = Field(
        description="[x1, y1, x2, y2], image pixels", examples=[_BOX]
    )
    box_score: float | None = Field(
        None, ge=0, le=1, description="the detector's confidence, for a person it found"
    )
    score: float = Field(ge=0, le=1, description="mean keypoint score")
    keypoints: list[Keypoint]


class ImageSize(BaseModel):
    width: int
    height: int


class ImageResult(BaseModel):
    image: ImageSize
    persons: list[PersonResult] = Field(
        description="one per box sent, in box order; or every person found, best first"
    )


class PoseResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [POSE_EXAMPLE]})

    model: ModelSummary
    results: list[ImageResult] = Field(description="one per image, in upload order")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class DetectorDetails(BaseModel):
    name: str
    version: str
    input_size: tuple[int, int] = Field(
        description="network input (width, height)", examples=[_INPUT_SIZE]
    )
    max_persons: int = Field(description="the most persons it finds in one image")
    metadata: dict[str, str] = Field(description="all metadata of the detector's ONNX model")


class ModelDetails(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [MODEL_EXAMPLE]})

    name: str
    version: str
    input_size: tuple[int, int] = Field(
        description="network input (width, height)", examples=[_INPUT_SIZE]
    )
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]] = Field(
        description="pairs of keypoint indices joined by a limb", examples=[_SKELETON]
    )
    debias: bool
    provider: str = Field(description="the onnxruntime execution provider in use")
    metadata: dict[str, str] = Field(description="all metadata of the ONNX model")
    detector: DetectorDetails | None = Field(
        None, description="the person detector, unless detection is off"
    )


class Health(BaseModel):
    status: str
    reason: str | None = None


def pose_json(results: Sequence[ImagePoses], model: ModelInfo, raw: bool) -> bytes:
    """The /pose answer as JSON bytes, shaped as `PoseResponse` with None fields left out.

    Written directly rather than through PoseResponse: building ~20 pydantic models per person,
    then FastAPI's validation and serialisation of them, cost more CPU per request than decoding
    a small photo's crop does (issue #16). `PoseResponse` stays the schema; a unit test checks
    that this JSON validates against it and equals what the models would serialise."""
    summary = {
        "name": model.name,
        "version": model.version,
        "input_size": list(model.input_size),
        "debias": model.debias,
    }
    names = model.keypoint_names
    answer = {
        "model": summary,
        "results": [
            {
                "image": {"width": r.width, "height": r.height},
                "persons": [_person(p, names, raw) for p in r.persons],
            }
            for r in results
        ],
    }
    return json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()


def _person(pose: PersonPose, names: tuple[str, ...], raw: bool) -> dict[str, Any]:
    # One conversion per array (tolist: Python floats), not one float() per value.
    xy = _coordinates(pose.keypoints)
    scores: list[float] = pose.scores.tolist()
    for score in scores:
        if not 0 <= score <= 1:  # what PoseResponse's validation refused: a broken model, 500
            raise ValueError(f"keypoint score {score} outside [0, 1]")
    if raw:
        xy_raw = _coordinates(pose.keypoints_raw)
        keypoints = [
            {"name": name, "x": x, "y": y, "score": score, "x_raw": x_raw, "y_raw": y_raw}
            for name, (x, y), score, (x_raw, y_raw) in zip(names, xy, scores, xy_raw, strict=True)
        ]
    else:
        keypoints = [
            {"name": name, "x": x, "y": y, "score": score}
            for name, (x, y), score in zip(names, xy, scores, strict=True)
        ]
    person: dict[str, Any] = {"box": [float(v) for v in pose.box]}
    if pose.box_score is not None:
        person["box_score"] = float(pose.box_score)
    person["score"] = float(pose.score)
    person["keypoints"] = keypoints
    return person


def _coordinates(points: np.ndarray) -> list[list[float | None]]:
    """[K, 2] → lists of floats; a non-finite coordinate becomes null, as pydantic wrote it."""
    values: list[list[float]] = points.tolist()
    # One sum instead of isfinite().all(): a NaN or an infinity anywhere makes it non-finite (so
    # does an overflow of finite values, which only sends it down the exact path below).
    if math.isfinite(np.add.reduce(points, axis=None)):
        return values  # type: ignore[return-value]
    return [[v if math.isfinite(v) else None for v in row] for row in values]


def model_details(model: ModelInfo, provider: str, detector: DetectorInfo | None) -> ModelDetails:
    return ModelDetails(
        name=model.name,
        version=model.version,
        input_size=model.input_size,
        keypoint_names=list(model.keypoint_names),
        skeleton=list(model.skeleton),
        debias=model.debias,
        provider=provider,
        metadata=model.metadata,
        detector=None
        if detector is None
        else DetectorDetails(
            name=detector.name,
            version=detector.version,
            input_size=detector.input_size,
            max_persons=detector.max_persons,
            metadata=detector.metadata,
        ),
    )
