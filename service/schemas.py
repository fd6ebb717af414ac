"""The JSON the service answers with (these models are also its OpenAPI schema)."""

from pydantic import BaseModel, Field


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


class Person(BaseModel):
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2], image pixels")
    score: float = Field(ge=0, le=1, description="mean keypoint score")
    keypoints: list[Keypoint]


class ImageSize(BaseModel):
    width: int
    height: int


class ImageResult(BaseModel):
    image: ImageSize
    persons: list[Person] = Field(description="one per box, in box order")


class PoseResponse(BaseModel):
    model: ModelSummary
    results: list[ImageResult] = Field(description="one per image, in upload order")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelDetails(BaseModel):
    name: str
    version: str
    input_size: tuple[int, int]
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]
    debias: bool
    provider: str = Field(description="the onnxruntime execution provider in use")
    metadata: dict[str, str] = Field(description="all metadata of the ONNX model")


class Health(BaseModel):
    status: str
    reason: str | None = None
