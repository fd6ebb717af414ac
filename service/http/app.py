"""The app factory: a `Runtime` from the settings, loaded in the lifespan, behind routes,
error handlers and middleware."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import start_http_server
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from dipr.core.errors import DiprError
from dipr.service.http.connections import STATE_KEY, ConnectionWatch
from dipr.service.http.docs import docs_router
from dipr.service.http.errors import error_body, error_response, http_error
from dipr.service.http.middleware import RequestLimits, RequestObserver
from dipr.service.http.routes import health_router, metrics_router, pose_router
from dipr.service.http.shortcut import PoseShortcut
from dipr.service.runtime import Runtime
from dipr.service.server import drain_this_worker
from dipr.service.settings import Settings

log = logging.getLogger("dipr.service")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's ASGI app; the model is loaded at start-up (lifespan), not here."""
    settings = settings or Settings()
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, ConnectionWatch]]:
        await asyncio.to_thread(runtime.load)
        metrics_server = None
        if settings.metrics_port is not None and not settings.metrics_port_supervised:
            # Its own listener: scrapable without exposing it alongside the API (and no key).
            metrics_server, _ = start_http_server(
                settings.metrics_port, settings.host, runtime.metrics.exposition_registry
            )
        # The lifespan state reaches every connection: `dipr serve`'s WatchedHttpProtocol reads
        # its client timeout and metrics there (plain uvicorn ignores it).
        metrics = runtime.metrics
        watch = ConnectionWatch(
            settings.client_timeout_s, metrics.stalled_connections, metrics.client_connections
        )
        yield {STATE_KEY: watch}
        await asyncio.to_thread(runtime.stop)
        if metrics_server is not None:
            metrics_server.shutdown()

    app = FastAPI(
        title="dipr",
        summary="Human pose estimation with debiased integral regression",
        version="0.1.0",
        lifespan=lifespan,
        # /docs and /redoc come from docs_router, with local assets instead of FastAPI's CDN ones.
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.api_keys = settings.all_api_keys()
    app.include_router(pose_router)
    app.include_router(health_router)
    app.include_router(docs_router)
    if settings.metrics_port is None:
        app.include_router(metrics_router)
    _handle_errors(app, runtime)
    # The last added is outermost: the observer also sees what the limit refuses, and the
    # shortcut, innermost, gets POST /pose with its body already limited.
    app.add_middleware(PoseShortcut)
    app.add_middleware(RequestLimits, max_bytes=settings.max_request_bytes, metrics=runtime.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(RequestObserver, metrics=runtime.metrics)
    return app


def create_worker_app() -> FastAPI:
    """The app of one of the processes that uvicorn's supervisor runs (`--workers`, several
    front-ends), with the drain that its servers lack (`DrainingServer` is the one-process
    layout's)."""
    settings = Settings()
    app = create_app(settings)
    drain_this_worker(app.state.runtime.begin_drain, settings.drain_delay_s)
    return app


def _handle_errors(app: FastAPI, runtime: Runtime) -> None:
    """Every error becomes the JSON error body; refusals are counted by code."""

    @app.exception_handler(DiprError)
    async def on_domain_error(request: Request, error: DiprError) -> JSONResponse:
        runtime.metrics.rejected.labels(http_error(error).code).inc()
        return error_response(error, runtime.settings.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        runtime.metrics.rejected.labels("invalid_request").inc()
        return JSONResponse(error_body("invalid_request", message), 422)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(error.detail)), error.status_code, headers=error.headers
        )

    @app.exception_handler(ClientDisconnect)
    async def on_client_gone(request: Request, error: ClientDisconnect) -> Response:
        # The connection closed before the body was read (the client left, or it stalled past
        # DIPR_CLIENT_TIMEOUT_S): no one to answer, nothing to log as an error. 499 (nginx's
        # "client closed request") is what the access log and the request counter see.
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body("internal", "internal error"), 500)
