"""The HTTP layer: FastAPI app factory, routes, errors as JSON, request metrics.

It knows requests and responses, nothing of ONNX: the work is done by `PosePipeline`.
"""

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import start_http_server
from starlette.exceptions import HTTPException

from dipr.service.backend import (
    ModelError,
    OnnxBackend,
    ProviderUnavailable,
    TensorrtOptions,
    configure_workers,
)
from dipr.service.batcher import Batcher
from dipr.service.errors import (
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
)
from dipr.service.images import SUPPORTED_MEDIA_TYPES
from dipr.service.logs import request_id
from dipr.service.metrics import Metrics
from dipr.service.pipeline import ImagePoses, PosePipeline
from dipr.service.render import render_jpeg
from dipr.service.request_body import read_pose_request
from dipr.service.schemas import (
    ErrorResponse,
    Health,
    ImageResult,
    ImageSize,
    Keypoint,
    ModelDetails,
    ModelSummary,
    Person,
    PoseResponse,
)
from dipr.service.settings import Settings

log = logging.getLogger("dipr.service")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Service:
    """Everything the routes share: settings, metrics, and the model once it is loaded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.backend: OnnxBackend | None = None
        self.batcher: Batcher | None = None
        self.pipeline: PosePipeline | None = None
        self.not_ready_reason: str | None = "loading the model"
        self.api_keys = settings.all_api_keys()

    def load(self) -> None:
        """Load the model, warm it up, start batching (blocking: run it off the event loop)."""
        s = self.settings
        try:
            backend = OnnxBackend(
                s.model_path,
                s.provider,
                s.device_id,
                s.intra_op_threads,
                TensorrtOptions(s.tensorrt_cache_dir, s.max_batch_size),
            )
            workers = configure_workers(backend, s.inference_workers, s.intra_op_threads)
            batcher = Batcher(
                backend.infer,
                s.max_batch_size,
                s.max_queue,
                s.batch_delay_ms / 1000,
                observer=self.metrics,
                retry_after_s=s.retry_after_s,
                workers=workers,
                infer_alongside=backend.infer_alongside,
            )
            backend.warm_up(s.warmup_batch_sizes, batcher.alongside_batch_size)
        except (ModelError, ProviderUnavailable) as error:
            log.error("not ready: %s", error)
            self.not_ready_reason = str(error)
            return
        self.batcher = batcher
        self.batcher.start()
        self.pipeline = PosePipeline(
            self.batcher, backend.info, s.max_image_pixels, s.box_padding, s.reduced_decode
        )
        self.backend = backend
        info = backend.info
        self.metrics.model_info.labels(info.name, info.version, backend.provider).set(1)
        self.metrics.queue_capacity.set(s.max_queue)
        self.not_ready_reason = None
        log.info("ready: %s %s on %s", info.name, info.version, backend.provider)

    def begin_drain(self) -> None:
        """Readiness goes 503 and new work is refused; accepted work goes on."""
        self.not_ready_reason = "shutting down"

    def stop(self) -> None:
        """Finish what the batcher accepted, then end it."""
        self.begin_drain()
        if self.batcher is not None:
            self.batcher.stop()

    def readiness(self) -> str | None:
        """None when ready, else why not."""
        if self.not_ready_reason is not None:
            return self.not_ready_reason
        failures = self.batcher.consecutive_failures if self.batcher else 0
        if failures >= self.settings.failure_threshold:
            return f"the last {failures} inference batches failed"
        return None


# The dependencies are `async def`: FastAPI runs a plain `def` one in its thread pool, a thread
# round trip per request for what is an attribute read.
async def get_service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


_bearer = HTTPBearer(auto_error=False, description="an API key, when the service has any")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


async def require_api_key(
    service: Annotated[Service, Depends(get_service)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header_key: Annotated[str | None, Security(_api_key_header)],
) -> None:
    keys = service.api_keys
    if not keys:
        return
    offered = (bearer.credentials if bearer else header_key or "").encode()
    # Compare with every key, without stopping early: the time taken says nothing about
    # which key, or how much of one, matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(offered, key)
    if not matched:
        raise Unauthorized("missing or wrong API key")


async def ready_pipeline(service: Annotated[Service, Depends(get_service)]) -> PosePipeline:
    # Loading, draining or a refused GPU stop requests; a streak of failed batches does not:
    # it only takes the replica out of rotation, and the next good batch ends the streak.
    reason = service.not_ready_reason
    if reason is not None or service.pipeline is None:
        raise NotReady(f"not ready: {reason}")
    return service.pipeline


ServiceDep = Annotated[Service, Depends(get_service)]
KEYED = [Depends(require_api_key)]
PipelineDep = Annotated[PosePipeline, Depends(ready_pipeline)]
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "undecodable image or malformed body",
        401: "missing or wrong API key (when API keys are configured)",
        413: "too many bytes, pixels, images or boxes",
        415: "unsupported content or image type",
        422: "bad boxes or parameters",
        500: "inference failed",
        503: "overloaded (Retry-After) or not ready",
        504: "deadline passed",
    }.items()
}
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


def error_response(error: ServiceError, retry_after: int = 1) -> JSONResponse:
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(error, Overloaded | NotReady):
        headers["Retry-After"] = str(getattr(error, "retry_after", retry_after))
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}},
        status_code=error.status,
        headers=headers,
    )


async def estimate(
    request: Request, service: Service, pipeline: PosePipeline, keep_pixels: bool
) -> list[ImagePoses]:
    s = service.settings
    deadline = time.monotonic() + s.request_timeout_s
    images = await read_pose_request(request, s.max_images, s.max_boxes)
    results = await pipeline.run(images, deadline, keep_pixels=keep_pixels)
    service.metrics.images.inc(len(results))
    service.metrics.persons.inc(sum(len(r.persons) for r in results))
    return results


def create_app(settings: Settings | None = None) -> FastAPI:
    service = Service(settings or Settings())

    settings = service.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(service.load)
        if settings.metrics_port is not None:
            # Its own listener: scrapable without exposing it alongside the API (and no key).
            metrics_server, _ = start_http_server(
                settings.metrics_port, settings.host, service.metrics.exposition_registry
            )
        yield
        await asyncio.to_thread(service.stop)
        if settings.metrics_port is not None:
            metrics_server.shutdown()

    app = FastAPI(
        title="dipr",
        summary="Human pose estimation with debiased integral regression",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, error: ServiceError) -> JSONResponse:
        service.metrics.rejected.labels(error.code).inc()
        return error_response(error, service.settings.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        service.metrics.rejected.labels("invalid_request").inc()
        return JSONResponse({"error": {"code": "invalid_request", "message": message}}, 422)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": {"code": code, "message": str(error.detail)}},
            error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"error": {"code": "internal", "message": "internal error"}}, 500)

    @app.post(
        "/pose",
        dependencies=KEYED,
        response_model=PoseResponse,
        response_model_exclude_none=True,
        responses=ERROR_RESPONSES,
        openapi_extra=POSE_BODY,
    )
    async def pose(
        request: Request,
        service: ServiceDep,
        pipeline: PipelineDep,
        raw: Annotated[bool, Query(description="add x_raw, y_raw")] = False,
    ) -> PoseResponse:
        """Keypoints for each person box (or the whole image) of each uploaded image."""
        results = await estimate(request, service, pipeline, keep_pixels=False)
        assert service.backend is not None
        info = service.backend.info
        names = info.keypoint_names
        return PoseResponse(
            model=ModelSummary(
                name=info.name, version=info.version, input_size=info.input_size, debias=info.debias
            ),
            results=[
                ImageResult(
                    image=ImageSize(width=r.width, height=r.height),
                    persons=[
                        Person(
                            box=p.box,
                            score=p.score,
                            keypoints=[
                                Keypoint(
                                    name=names[k],
                                    x=float(p.keypoints[k, 0]),
                                    y=float(p.keypoints[k, 1]),
                                    score=float(p.scores[k]),
                                    x_raw=float(p.keypoints_raw[k, 0]) if raw else None,
                                    y_raw=float(p.keypoints_raw[k, 1]) if raw else None,
                                )
                                for k in range(len(names))
                            ],
                        )
                        for p in r.persons
                    ],
                )
                for r in results
            ],
        )

    @app.post(
        "/pose/render",
        dependencies=KEYED,
        response_class=Response,
        openapi_extra=POSE_BODY,
        responses={
            200: {"content": {"image/jpeg": {}}, "description": "drawn poses"},
            **ERROR_RESPONSES,
        },
    )
    async def pose_render(request: Request, service: ServiceDep, pipeline: PipelineDep) -> Response:
        """The (single) uploaded image as JPEG with boxes and skeletons drawn."""
        results = await estimate(request, service, pipeline, keep_pixels=True)
        if len(results) != 1:
            raise PayloadTooLarge("/pose/render takes one image")
        assert service.backend is not None
        jpeg = await asyncio.to_thread(render_jpeg, results[0], service.backend.info.skeleton)
        return Response(jpeg, media_type="image/jpeg")

    @app.get("/health/live", response_model=Health)
    async def live() -> Health:
        return Health(status="alive")

    @app.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
    async def ready(service: ServiceDep) -> Response:
        reason = service.readiness()
        if reason is None:
            return JSONResponse(Health(status="ready").model_dump(exclude_none=True))
        return JSONResponse(
            Health(status="not_ready", reason=reason).model_dump(),
            503,
            headers={"Retry-After": str(service.settings.retry_after_s)},
        )

    @app.get(
        "/v1/model",
        dependencies=KEYED,
        response_model=ModelDetails,
        responses={401: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    )
    async def model(service: ServiceDep) -> ModelDetails:
        backend = service.backend
        if backend is None:
            raise NotReady(f"no model loaded: {service.not_ready_reason}")
        info = backend.info
        return ModelDetails(
            name=info.name,
            version=info.version,
            input_size=info.input_size,
            keypoint_names=list(info.keypoint_names),
            skeleton=list(info.skeleton),
            debias=info.debias,
            provider=backend.provider,
            metadata=info.metadata,
        )

    if settings.metrics_port is None:

        @app.get(
            "/metrics",
            dependencies=KEYED,
            response_class=Response,
            responses={
                200: {"content": {"text/plain": {}}, "description": "Prometheus"},
                401: {"model": ErrorResponse},
            },
        )
        async def metrics(service: ServiceDep) -> Response:
            body, content_type = service.metrics.exposition()
            return Response(body, media_type=content_type)

    # The last added is outermost: the observer also sees what the limit refuses.
    app.add_middleware(RequestLimits, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(RequestObserver, metrics=service.metrics)
    return app


class RequestLimits:
    """Refuses bodies over the byte limit: at once by Content-Length, else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await error_response(PayloadTooLarge(f"request body over {limit} bytes"))(
                scope, receive, send
            )
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("dipr.access")


class RequestObserver:
    """One pass over every request: gives it an id (the client's X-Request-ID if sane, else a new
    one) returned as a header and carried by its log lines, counts and times it by route
    template, and writes one access log line (pure ASGI, no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            # Templates, not raw paths: unknown paths must not create new label values.
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.request_duration.labels(route).observe(seconds)
            client = scope.get("client")
            access_log.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        "client": client[0] if client else None,
                    }
                },
            )
            request_id.reset(token)
