"""Pure ASGI middleware: the body size limit, and one observer for ids, metrics and access logs."""

import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.routing import compile_path

from dipr.core.errors import LimitExceeded
from dipr.service.http.errors import error_response, http_error
from dipr.service.logs import request_id, write_waiting_lines
from dipr.service.metrics import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
access_log = logging.getLogger("dipr.access")


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The last value of a (lower-case) request header, as dict(scope["headers"]) would give."""
    value = None
    for key, header_value in scope["headers"]:
        if key == name:
            value = header_value
    return value


class RequestLimits:
    """Refuses bodies over the byte limit: at once by Content-Length (counted here: no exception
    handler sees it), else while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: ServiceMetrics | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            refusal = LimitExceeded(f"request body over {limit} bytes")
            if self.metrics is not None:
                self.metrics.rejected.labels(http_error(refusal).code).inc()
            await error_response(refusal, retry_after_s=1)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise LimitExceeded(f"request body over {limit} bytes")
            return message

        await self.app(scope, counted, send)


class RouteTemplates:
    """Labels requests by the template of their route, not by their raw path: unknown paths
    must not create new label values. Routing names the route; a request refused before routing
    (a body over the limit) is labelled with the first documented route whose template its path
    matches (the app's OpenAPI paths, read once), else "unmatched"."""

    def __init__(self) -> None:
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, scope: Scope) -> str:
        routed = scope.get("route")
        if routed is not None:
            return str(getattr(routed, "path", "unmatched"))
        if self._templates is None:
            self._templates = self._documented(scope.get("app"))
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        return next((t for pattern, t in self._templates if pattern.match(path)), "unmatched")

    @staticmethod
    def _documented(app: Any) -> list[tuple[re.Pattern[str], str]]:
        openapi = getattr(app, "openapi", None)
        paths = openapi().get("paths", {}) if callable(openapi) else {}
        return [(compile_path(template)[0], template) for template in paths]


class RequestObserver:
    """One pass over every request: gives it an id (the client's X-Request-ID if sane, else a new
    one) returned as a header and carried by its log lines, counts it by route template and status,
    times it by route template and status class, and writes one access log line (method, path,
    status, duration, client, request id; no body buffering)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.route_template = RouteTemplates()
        self._in_flight = 0  # requests begun and not yet logged

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = (_header(scope, b"x-request-id") or b"").decode("latin-1")
        # 128 random bits as 32 hex digits, like a uuid4's: from the interpreter's generator,
        # not os.urandom, whose system call releases the GIL and waits to get it back from the
        # decoding threads (unpredictable ids are not needed: they only tie log lines together).
        rid = offered if _REQUEST_ID.fullmatch(offered) else f"{random.getrandbits(128):032x}"
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        self._in_flight += 1

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
            self.metrics.request_done(scope["method"], self.route_template(scope), status, seconds)
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
            self._in_flight -= 1
            if self._in_flight == 0:  # idle: nothing to save by letting access lines wait
                write_waiting_lines(access_log)
