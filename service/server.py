"""uvicorn with a drain: on SIGTERM readiness turns 503 at once and new work is refused, then the
listener closes and accepted requests finish before the process exits."""

import logging
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger("dipr.service")


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, begin_drain: Callable[[], None], drain_delay_s: float
    ) -> None:
        super().__init__(config)
        self._begin_drain = begin_drain
        self._drain_delay = drain_delay_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: stop now, as plain uvicorn does
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._begin_drain()
        log.info("draining: readiness is 503; closing the listener in %.1f s", self._drain_delay)
        # Load balancers need a moment to see the 503 before connections start being refused;
        # then uvicorn's own shutdown waits for the requests already accepted.
        timer = threading.Timer(self._drain_delay, super().handle_exit, (sig, frame))
        timer.daemon = True
        timer.start()
