"""uvicorn's HTTP protocol, plus closing clients that stop sending their request.

uvicorn times out only idle keep-alive: a client that sends nothing, or part of its headers or
body, then stalls, holds a socket forever. This closes it after DIPR_CLIENT_TIMEOUT_S, counted."""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge
from uvicorn.config import Config
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

# The key of the lifespan state under which the app hands its watch to the protocol.
STATE_KEY = "connection_watch"


@dataclass(frozen=True)
class ConnectionWatch:
    """What the protocol needs from the app: the silence allowed, and where to count."""

    timeout_s: float
    closed: Counter  # connections closed for a stalled client
    open: Gauge  # connections open now


class _ResumeAwareFlow(FlowControl):
    """uvicorn's flow control, telling the protocol when it reads again after a pause."""

    def __init__(self, transport: asyncio.Transport, on_resume: Callable[[], None]) -> None:
        super().__init__(transport)
        self._on_resume = on_resume

    def resume_reading(self) -> None:
        was_paused = self.read_paused
        super().resume_reading()
        if was_paused:
            self._on_resume()


class WatchedHttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that closes a connection whose client owes bytes (nothing received
    yet, or a request begun and not yet complete) and sent none for `timeout_s`.

    Not watched: a request that is complete (the app is working on it), idle keep-alive between
    requests (uvicorn's own timer), and any time uvicorn has paused reading (flow control: the
    server's doing, not the client's). One lazy timer per connection: each chunk only records
    the time; the timer, when it fires, closes the connection or waits for the rest.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._watch: ConnectionWatch | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_heard = 0.0  # loop time of the last bytes received (or of reads resuming)
        self._in_message = False  # between on_message_begin and on_message_complete

    # Connection life
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        watch = self.app_state.get(STATE_KEY)
        if not isinstance(watch, ConnectionWatch):
            return  # no watch handed over: plain uvicorn
        self._watch = watch
        watch.open.inc()
        self.flow = _ResumeAwareFlow(transport, self._reads_resumed)
        self._last_heard = self.loop.time()
        self._arm(watch.timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._release()  # the WebSocket protocol takes the connection over
        super().handle_websocket_upgrade()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watch is not None:
            self._watch.open.dec()
            self._watch = None

    # What the client sends
    def data_received(self, data: bytes) -> None:
        self._last_heard = self.loop.time()
        super().data_received(data)
        if self._watch is not None and self._timer is None:
            self._arm(self._watch.timeout_s)

    def on_message_begin(self) -> None:
        self._in_message = True
        super().on_message_begin()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()

    def _reads_resumed(self) -> None:
        # Whatever waited while reading was paused, the client's silence counts from now.
        self._last_heard = self.loop.time()
        if self._watch is not None and self._timer is None:
            self._arm(self._watch.timeout_s)

    # The watch
    def _client_owes_bytes(self) -> bool:
        """Whether the connection waits on its client: a request begun and not complete, or
        nothing yet since connecting (or since a response, when no keep-alive timer runs: bytes
        that began no request cancel uvicorn's), and reading is not paused by uvicorn."""
        if self.flow is None or self.flow.read_paused:
            return False
        if self._in_message:
            return True
        between_requests = self.cycle is None or self.cycle.response_complete
        return between_requests and not self.pipeline and self.timeout_keep_alive_task is None

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        watch = self._watch
        if watch is None or self.transport.is_closing() or not self._client_owes_bytes():
            return  # the next bytes received, or reads resuming, arm the timer again
        remaining = watch.timeout_s - (self.loop.time() - self._last_heard)
        if remaining > 0:
            self._arm(remaining)
            return
        watch.closed.inc()
        self.transport.close()
