"""uvicorn with a drain: on SIGTERM readiness turns 503 at once and new work is refused, then the
listener closes and accepted requests finish before the process exits."""

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

log = logging.getLogger("dipr.service")
ExitHandler = Callable[[int, FrameType | None], object]


class Drain:
    """What a first SIGINT/SIGTERM does before uvicorn's own exit: `begin_drain`, then uvicorn's
    exit `delay_s` later; a second signal exits at once, as plain uvicorn does."""

    def __init__(
        self, begin_drain: Callable[[], None], delay_s: float, exit_server: ExitHandler
    ) -> None:
        self._begin_drain = begin_drain
        self._delay_s = delay_s
        self._exit_server = exit_server
        self._draining = False

    def __call__(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:
            self._exit_server(sig, frame)
            return
        self._draining = True
        self._begin_drain()
        log.info("draining: readiness is 503; closing the listener in %.1f s", self._delay_s)
        # Load balancers need a moment to see the 503 before connections start being refused;
        # then uvicorn's own shutdown waits for the requests already accepted.
        timer = threading.Timer(self._delay_s, self._exit_server, (sig, frame))
        timer.daemon = True
        timer.start()


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, begin_drain: Callable[[], None], drain_delay_s: float
    ) -> None:
        super().__init__(config)
        self._drain = Drain(begin_drain, drain_delay_s, super().handle_exit)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._drain(sig, frame)


def drain_this_worker(begin_drain: Callable[[], None], delay_s: float) -> None:
    """The drain for a process whose uvicorn server is not ours (a worker of uvicorn's
    supervisor, which forwards SIGTERM to each): put `Drain` in front of the server's handlers.
    Called while the server runs (from the app factory, on the main thread), after uvicorn
    installed its handlers, which it restores itself when it stops."""
    if threading.current_thread() is not threading.main_thread():
        return  # not a server's process: signal handlers belong to the main thread
    for sig in (signal.SIGINT, signal.SIGTERM):
        exit_server = signal.getsignal(sig)
        if callable(exit_server):
            signal.signal(sig, Drain(begin_drain, delay_s, exit_server))
