"""The routes: pose estimation, drawing, health, the model's description and metrics."""

import asyncio
import time
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from dipr.core.errors import DeadlineExceeded, LimitExceeded, NotReady
from dipr.core.images import SUPPORTED_MEDIA_TYPES
from dipr.service.http.dependencies import KEYED, RuntimeDep
from dipr.service.http.errors import DESCRIPTIONS
from dipr.service.http.request_body import read_pose_request
from dipr.service.http.responses import (
    ErrorResponse,
    Health,
    ModelDetails,
    PoseResponse,
    model_details,
    pose_response,
)
from dipr.service.pipeline import ImagePoses, PoseOptions
from dipr.service.render import render_jpeg
from dipr.service.runtime import Runtime

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in DESCRIPTIONS.items()
}
# The body is read by `read_pose_request`, not by FastAPI: the schema is written out here.
POSE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "boxes": {
                            "type": "string",
                            "description": "JSON: one list of [x1, y1, x2, "
                            "y2] pixel boxes per image; empty or null for the whole image",
                        },
                    },
                }
            },
            **{
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in SUPPORTED_MEDIA_TYPES
            },
        },
    }
}


async def detection_options(
    detect: Annotated[
        bool | None,
        Query(
            description="find the persons of images sent without boxes (default: yes, unless "
            "the service's detection is off); false: each such image is one whole-image crop"
        ),
    ] = None,
    min_score: Annotated[
        float | None,
        Query(ge=0, le=1, description="the detector's threshold (default: DIPR_MIN_PERSON_SCORE)"),
    ] = None,
) -> PoseOptions:
    return PoseOptions(detect=detect, min_score=min_score)


DetectionDep = Annotated[PoseOptions, Depends(detection_options)]
pose_router = APIRouter(dependencies=KEYED)
health_router = APIRouter()
metrics_router = APIRouter(dependencies=KEYED)


async def _estimate(
    request: Request, runtime: Runtime, options: PoseOptions, one_image: bool = False
) -> list[ImagePoses]:
    s = runtime.settings
    deadline = time.monotonic() + s.request_timeout_s
    try:  # a slow upload counts against the request's deadline too
        async with asyncio.timeout(s.request_timeout_s):
            images = await read_pose_request(request, s.max_images, s.max_boxes)
    except TimeoutError:
        raise DeadlineExceeded("the request's body did not arrive before its deadline") from None
    if one_image and len(images) > 1:
        raise LimitExceeded(f"{request.url.path} takes one image")
    return await runtime.estimate(images, options, deadline)


@pose_router.post(
    "/pose",
    response_model=PoseResponse,
    response_model_exclude_none=True,
    responses=ERROR_RESPONSES,
    openapi_extra=POSE_BODY,
)
async def pose(
    request: Request,
    runtime: RuntimeDep,
    detection: DetectionDep,
    raw: Annotated[bool, Query(description="add x_raw, y_raw")] = False,
) -> PoseResponse:
    """Keypoints of every person of each uploaded image: of each box sent, or of each person the
    detector finds in an image sent without boxes."""
    results = await _estimate(request, runtime, detection)
    assert runtime.model is not None  # estimate succeeded: a model is loaded
    return pose_response(results, runtime.model, raw)


@pose_router.post(
    "/pose/render",
    response_class=Response,
    openapi_extra=POSE_BODY,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "drawn poses"},
        **ERROR_RESPONSES,
    },
)
async def pose_render(request: Request, runtime: RuntimeDep, detection: DetectionDep) -> Response:
    """The (single) uploaded image as JPEG with every person's box and skeleton drawn."""
    options = replace(detection, keep_pixels=True)
    (result,) = await _estimate(request, runtime, options, one_image=True)
    assert runtime.model is not None
    jpeg = await asyncio.to_thread(render_jpeg, result, runtime.model.skeleton)
    return Response(jpeg, media_type="image/jpeg")


@pose_router.get(
    "/v1/model",
    response_model=ModelDetails,
    responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def model(runtime: RuntimeDep) -> ModelDetails:
    if runtime.model is None or runtime.provider is None:
        raise NotReady(f"no model loaded: {runtime.readiness()}")
    return model_details(runtime.model, runtime.provider, runtime.detector)


@health_router.get("/health/live", response_model=Health)
async def live() -> Health:
    return Health(status="alive")


@health_router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
async def ready(runtime: RuntimeDep) -> Response:
    reason = runtime.readiness()
    if reason is None:
        return JSONResponse(Health(status="ready").model_dump(exclude_none=True))
    return JSONResponse(
        Health(status="not_ready", reason=reason).model_dump(),
        503,
        headers={"Retry-After": str(runtime.settings.retry_after_s)},
    )


@metrics_router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "Prometheus"},
        401: {"model": ErrorResponse},
    },
)
async def metrics(runtime: RuntimeDep) -> Response:
    body, content_type = runtime.metrics.exposition()
    return Response(body, media_type=content_type)
