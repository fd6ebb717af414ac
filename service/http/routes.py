"""The routes: pose estimation, drawing, health, the model's description and metrics."""

import asyncio
import time
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from dipr.core.errors import DeadlineExceeded, LimitExceeded, NotReady
from dipr.core.images import SUPPORTED_MEDIA_TYPES
from dipr.service.http.dependencies import KEYED, RuntimeDep, check_api_key
from dipr.service.http.errors import DESCRIPTIONS, ERRORS, INTERNAL, error_body
from dipr.service.http.request_body import read_pose_request
from dipr.service.http.responses import (
    MODEL_EXAMPLE,
    POSE_EXAMPLE,
    ErrorResponse,
    Health,
    ModelDetails,
    PoseResponse,
    model_details,
    pose_json,
)
from dipr.service.pipeline import ImagePoses, PoseOptions
from dipr.service.render import render_jpeg
from dipr.service.runtime import Runtime

# One message of each error code, as the service words it, for the OpenAPI examples.
_EXAMPLE_MESSAGES = {
    "undecodable_image": "the data is not a JPEG, PNG, WebP or BMP image",
    "malformed_request": "cannot parse the multipart body: Missing boundary in multipart.",
    "unauthorized": "missing or wrong API key",
    "payload_too_large": "at most 16 images per request",
    "unsupported_media_type": "GIF images are not supported; send a JPEG, PNG, WebP or BMP image",
    "invalid_request": "boxes is not valid JSON: Expecting value: line 1 column 1 (char 0)",
    "inference_failed": "inference failed: RuntimeException: …",
    "internal": "internal error",
    "overloaded": "the pose queue is full (256 waiting)",
    "not_ready": "not ready: loading the models",
    "deadline_exceeded": "the deadline passed before decoding",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers for these error statuses: the error body, with an example of each code
    that the status carries."""
    return {
        status: {
            "model": ErrorResponse,
            "description": DESCRIPTIONS[status],
            "content": {
                "application/json": {
                    "examples": {
                        code: {
                            "summary": code,
                            "value": error_body(
                                code, _EXAMPLE_MESSAGES.get(code, DESCRIPTIONS[status])
                            ),
                        }
                        for code in _codes(status)
                    }
                }
            },
        }
        for status in statuses
    }


def _codes(status: int) -> list[str]:
    return sorted({e.code for e in [*ERRORS.values(), INTERNAL] if e.status == status})


def _example(value: dict[str, Any]) -> dict[str, Any]:
    """A JSON answer's example as OpenAPI shows it: both /docs and /redoc show this one as is,
    where they would otherwise make up a sample from the schema."""
    return {"content": {"application/json": {"example": value}}}


ERROR_RESPONSES = error_responses(*DESCRIPTIONS)
ALIVE = Health(status="alive").model_dump(exclude_none=True)
READY = Health(status="ready").model_dump(exclude_none=True)
NOT_READY = Health(status="not_ready", reason="loading the models").model_dump()
# The body is read by `read_pose_request`, not by FastAPI: the schema is written out here.
# "Try it out" in /docs sends what this schema pre-fills: `boxes` starts empty (a sample value
# such as "string" would be sent as is and refused), and an empty `boxes` means no boxes.
POSE_BODY = {
    "requestBody": {
        "required": True,
        "description": "multipart/form-data: images in the field `image` and optionally their "
        "boxes in `boxes`; or one image as the whole body (its persons are found)",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                            "description": "one file per image: JPEG, PNG, WebP or BMP",
                        },
                        "boxes": {
                            "type": "string",
                            "default": "",
                            "description": "JSON: one list of [x1, y1, x2, y2] pixel boxes per "
                            "image, in upload order, e.g. `[[[40, 20, 470, 512]]]` for one image "
                            "with one person; `[]` or `null` for an image whose persons are to "
                            "be found. Empty or absent: find the persons of every image",
                        },
                    },
                }
            },
            **{
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in (*SUPPORTED_MEDIA_TYPES, "application/octet-stream")
            },
        },
    },
    # Read with the body by `read_pose_request` (it refuses it beside a multipart `boxes`).
    "parameters": [
        {
            "name": "boxes",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "for a raw image body only: its boxes, the same JSON as the form "
            "field, e.g. `[[[40, 20, 470, 512]]]`; absent: find the persons",
        }
    ],
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
RawQuery = Annotated[bool, Query(description="add x_raw, y_raw")]


class PoseQuery(BaseModel):
    """/pose's query parameters, validated as FastAPI validates `detection_options` and `raw`."""

    detect: bool | None = None
    min_score: float | None = Field(None, ge=0, le=1)
    raw: bool = False


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


async def pose_served(request: Request) -> Response:
    """What answers POST /pose (`shortcut.PoseShortcut` calls it): the documented `pose` below,
    without FastAPI's per-request dependency solving (the API key's two security schemes, the
    runtime, the query parameters cost ~0.15 ms of CPU per request, issue #16). The same API key
    check first, then the same query validation (errors as FastAPI reports them), the same work."""
    await check_api_key(request)
    if request.scope["query_string"]:
        try:
            query = PoseQuery.model_validate(
                {name: value for name, value in request.query_params.items() if name in _POSE_QUERY}
            )
        except ValidationError as error:
            raise RequestValidationError(
                [{**e, "loc": ("query", *e["loc"])} for e in error.errors(include_url=False)]
            ) from None
    else:
        query = _NO_QUERY
    runtime: Runtime = request.app.state.runtime
    options = PoseOptions(detect=query.detect, min_score=query.min_score)
    return await _pose(request, runtime, options, query.raw)


_POSE_QUERY = frozenset(PoseQuery.model_fields)
_NO_QUERY = PoseQuery()


@pose_router.post(
    "/pose",
    response_model=PoseResponse,
    response_model_exclude_none=True,
    responses={200: _example(POSE_EXAMPLE), **ERROR_RESPONSES},
    openapi_extra=POSE_BODY,
)
async def pose(
    request: Request, runtime: RuntimeDep, detection: DetectionDep, raw: RawQuery = False
) -> Response:
    """Keypoints of every person of each uploaded image: of each box sent, or of each person the
    detector finds in an image sent without boxes."""
    return await _pose(request, runtime, detection, raw)


async def _pose(request: Request, runtime: Runtime, options: PoseOptions, raw: bool) -> Response:
    results = await _estimate(request, runtime, options)
    assert runtime.model is not None  # estimate succeeded: a model is loaded
    # Already JSON: returned as is, FastAPI neither validates nor serialises it again.
    return Response(pose_json(results, runtime.model, raw), media_type="application/json")


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
    responses={200: _example(MODEL_EXAMPLE), **error_responses(401, 503)},
)
async def model(runtime: RuntimeDep) -> ModelDetails:
    if runtime.model is None or runtime.provider is None:
        raise NotReady(f"no model loaded: {runtime.readiness()}")
    return model_details(runtime.model, runtime.provider, runtime.detector)


@health_router.get("/health/live", response_model=Health, responses={200: _example(ALIVE)})
async def live() -> Health:
    return Health(status="alive")


@health_router.get(
    "/health/ready",
    response_model=Health,
    responses={
        200: _example(READY),
        503: {"model": Health, "description": "not ready, and why", **_example(NOT_READY)},
    },
)
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
        **error_responses(401),
    },
)
async def metrics(runtime: RuntimeDep) -> Response:
    body, content_type = runtime.metrics.exposition()
    return Response(body, media_type=content_type)
