"""The JSON the service answers with (these models are also its OpenAPI schema), and how a
pipeline's results become it."""

from collections.abc import Sequence

from pydantic import BaseModel, Field

from dipr.core.detector_contract import DetectorInfo
from dipr.core.pose_contract import ModelInfo
from dipr.service.pipeline import ImagePoses, PersonPose


class ModelSummary(BaseModel):
    name: str
    version: str
    input_size: tuple[int, int] = Field(description="network input (width, height)")
    debias: bool = Field(description="keypoints carry the closed-form debiasing")


class Keypoint(BaseModel):
    name: str
    x: float = Field(description="column, image pixels (centre of the first pixel is 0)")
    y: float = Field(description="row, image pixels")
    score: float = Field(ge=0, le=1, description="the model's confidence that the joint is here")
    x_raw: float | None = Field(None, description="uncorrected soft-argmax x (with ?raw=true)")
    y_raw: float | None = Field(None, description="uncorrected soft-argmax y (with ?raw=true)")


class PersonResult(BaseModel):
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2], image pixels")
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
    input_size: tuple[int, int]
    max_persons: int = Field(description="the most persons it finds in one image")
    metadata: dict[str, str] = Field(description="all metadata of the detector's ONNX model")


class ModelDetails(BaseModel):
    name: str
    version: str
    input_size: tuple[int, int]
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]
    debias: bool
    provider: str = Field(description="the onnxruntime execution provider in use")
    metadata: dict[str, str] = Field(description="all metadata of the ONNX model")
    detector: DetectorDetails | None = Field(
        None, description="the person detector, unless detection is off"
    )


class Health(BaseModel):
    status: str
    reason: str | None = None


def pose_response(results: Sequence[ImagePoses], model: ModelInfo, raw: bool) -> PoseResponse:
    names = model.keypoint_names
    return PoseResponse(
        model=ModelSummary(
            name=model.name, version=model.version, input_size=model.input_size, debias=model.debias
        ),
        results=[
            ImageResult(
                image=ImageSize(width=r.width, height=r.height),
                persons=[_person(p, names, raw) for p in r.persons],
            )
            for r in results
        ],
    )


def _person(pose: PersonPose, names: tuple[str, ...], raw: bool) -> PersonResult:
    return PersonResult(
        box=pose.box,
        box_score=pose.box_score,
        score=pose.score,
        keypoints=[
            Keypoint(
                name=name,
                x=float(pose.keypoints[k, 0]),
                y=float(pose.keypoints[k, 1]),
                score=float(pose.scores[k]),
                x_raw=float(pose.keypoints_raw[k, 0]) if raw else None,
                y_raw=float(pose.keypoints_raw[k, 1]) if raw else None,
            )
            for k, name in enumerate(names)
        ],
    )


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
