"""POST /pose without FastAPI's routing and per-request machinery (issue #16).

Every request went through Starlette's exception middleware, FastAPI's router, its exit stacks
and its dependency solving before `/pose` began, and back: about a fifth of the event loop's CPU
per request with a small photo, for work this route does not need. `PoseShortcut` sits right
inside the service's own middleware (the request observer, CORS, the body limit: they see the
request as before) and answers POST /pose itself: the same handler (`routes.pose_served`), its
errors turned into responses by the app's own exception handlers, as Starlette's exception
middleware does; an error no handler takes goes on up to Starlette's server-error middleware, as
before. The documented route in routes.py stays the OpenAPI description (and is what any other
mounting of the routers serves).
"""

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import get_route_path

from dipr.service.http.middleware import ASGIApp, Message, Receive, Scope, Send
from dipr.service.http.routes import pose_served

Handler = Callable[[Request, Exception], Any]


class PoseShortcut:
    """Answers POST /pose with `pose_served`; passes every other request on to `app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Read from the app at its first request (its handlers and routes are complete by then).
        self._handlers: dict[type[Exception] | int, Handler] | None = None
        self._documented_route: APIRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or get_route_path(scope) != "/pose":
            await self.app(scope, receive, send)
            return
        if self._handlers is None:
            self._learn(scope["app"])
        # What routing would have set: the observer labels the request by this route's template.
        if self._documented_route is not None:
            scope["route"] = self._documented_route
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            response: Response = await pose_served(request)
            await response(scope, receive, send_noting_start)
        except Exception as error:
            handler = self._handler_for(error)
            if handler is None:
                raise
            if started:
                raise RuntimeError(
                    "Caught handled exception, but response already started."
                ) from error
            answer = handler(request, error)
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is not None:
                await answer(scope, receive, send_noting_start)
            error.__traceback__ = None  # as Starlette: a reused exception keeps no frames

    def _learn(self, app: Any) -> None:
        """The app's exception handlers as Starlette's exception middleware gets them (the one
        for Exception, or 500, belongs to the server-error middleware), and the documented
        POST /pose route."""
        handlers: Mapping[Any, Handler] = app.exception_handlers
        self._handlers = {
            key: handler for key, handler in handlers.items() if key not in (500, Exception)
        }
        self._documented_route = next(
            (
                route
                for route in app.routes
                if isinstance(route, APIRoute)
                and route.path == "/pose"
                and "POST" in route.methods
                and route.include_in_schema
            ),
            None,
        )

    def _handler_for(self, error: Exception) -> Handler | None:
        assert self._handlers is not None
        if isinstance(error, HTTPException) and error.status_code in self._handlers:
            return self._handlers[error.status_code]
        for kind in type(error).__mro__:
            if kind in self._handlers:
                return self._handlers[kind]
        return None
