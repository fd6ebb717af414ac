"""WatchedHttpProtocol's timer over a real socket pair (no listener): which silences close a
connection and are counted, and which do not. Timeouts are scaled down to fractions of a
second; tests/test_stalled_uploads.py runs the same against `dipr serve`."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge
from uvicorn.config import Config
from uvicorn.server import ServerState

from dipr.service.http.connections import STATE_KEY, ConnectionWatch, WatchedHttpProtocol

TIMEOUT = 0.2  # the client timeout of these tests, seconds
KEEP_ALIVE = 1  # uvicorn's keep-alive timeout here (an int in uvicorn's Config)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class App:
    """Reads the body (`/slow-reader`: only after a pause longer than the timeout), then
    answers the bytes received (`/slow-app`: after computing longer than the timeout); keeps
    the last message its `receive` gave."""

    def __init__(self) -> None:
        self.last_message: dict[str, Any] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow-reader":
            await asyncio.sleep(4 * TIMEOUT)
        received = 0
        while True:
            message = await receive()
            self.last_message = message
            if message["type"] == "http.disconnect":
                return
            received += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        if scope["path"] == "/slow-app":
            await asyncio.sleep(3 * TIMEOUT)
        body = str(received).encode()
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Served:
    def __init__(self, client: socket.socket, app: App, registry: CollectorRegistry) -> None:
        self.client = client
        self.app = app
        self.registry = registry
        self.loop = asyncio.get_running_loop()

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.client, data)

    async def answer(self, within: float) -> bytes:
        """What the server sends next; b"" once it closed the connection."""
        return await asyncio.wait_for(self.loop.sock_recv(self.client, 65536), within)

    async def closed_after(self, within: float) -> float | None:
        """Seconds until the server closes the connection, reading and dropping any answer;
        None if it is still open after `within`."""
        started = time.monotonic()
        try:
            while await self.answer(within - (time.monotonic() - started)):
                pass
        except TimeoutError:
            return None
        except ConnectionResetError:
            pass
        return time.monotonic() - started

    def stalled(self) -> float:
        return self.registry.get_sample_value("stalled_closed_total") or 0.0

    def open(self) -> float:
        return self.registry.get_sample_value("connections_open") or 0.0


@asynccontextmanager
async def served(watched: bool = True) -> AsyncIterator[Served]:
    """One connection of WatchedHttpProtocol serving `App`, its client end non-blocking."""
    registry = CollectorRegistry()
    watch = ConnectionWatch(
        TIMEOUT,
        Counter("stalled_closed", "", registry=registry),
        Gauge("connections_open", "", registry=registry),
    )
    app = App()
    config = Config(app, log_config=None, timeout_keep_alive=KEEP_ALIVE, lifespan="off")
    state = ServerState()
    app_state = {STATE_KEY: watch} if watched else {}
    loop = asyncio.get_running_loop()
    server_end, client = socket.socketpair()
    client.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(
        lambda: WatchedHttpProtocol(config, state, app_state, loop), server_end
    )
    try:
        yield Served(client, app, registry)
    finally:
        client.close()
        transport.close()
        await asyncio.sleep(0)  # connection_lost runs
        for task in list(state.tasks):
            task.cancel()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


HEAD = (
    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n"
)


@pytest.mark.parametrize(
    "sent",
    [b"", b"\r\n", b"POST /upload HT", b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Ty", HEAD],
    ids=["nothing", "blank line", "half a request line", "half the headers", "headers only"],
)
def test_a_client_that_stalls_before_its_request_is_complete_is_closed_and_counted(
    sent: bytes,
) -> None:
    async def test() -> None:
        async with served() as s:
            assert s.open() == 1
            await s.send(sent)
            closed = await s.closed_after(TIMEOUT * 5)
            assert closed is not None, "still open"
            assert TIMEOUT * 0.8 < closed < TIMEOUT * 3
            assert s.stalled() == 1
            await asyncio.sleep(0.01)
            assert s.open() == 0

    run(test)


def test_a_stalled_body_is_closed_and_the_app_sees_a_disconnect() -> None:
    async def test() -> None:
        async with served() as s:
            await s.send(HEAD + b"ab")
            assert await s.closed_after(TIMEOUT * 5) is not None
            assert s.stalled() == 1
            assert s.app.last_message == {"type": "http.disconnect"}

    run(test)


def test_a_body_that_keeps_coming_is_not_cut() -> None:
    async def test() -> None:
        async with served() as s:
            await s.send(HEAD)
            for _ in range(10):  # 1000 bytes over 5 × the timeout, a chunk every half timeout
                await asyncio.sleep(TIMEOUT / 2)
                await s.send(b"x" * 100)
            answer = await s.answer(TIMEOUT * 5)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"1000")
            assert s.stalled() == 0

    run(test)


def test_an_app_computing_longer_than_the_timeout_is_not_cut() -> None:
    async def test() -> None:
        async with served() as s:
            await s.send(HEAD.replace(b"/upload", b"/slow-app") + b"x" * 1000)
            answer = await s.answer(TIMEOUT * 10)
            assert answer.startswith(b"HTTP/1.1 200")
            assert s.stalled() == 0

    run(test)


def test_idle_keep_alive_is_left_to_uvicorn() -> None:
    async def test() -> None:
        async with served() as s:
            await s.send(HEAD + b"x" * 1000)
            assert (await s.answer(TIMEOUT * 5)).startswith(b"HTTP/1.1 200")
            closed = await s.closed_after(KEEP_ALIVE + 1)
            assert closed is not None and closed > KEEP_ALIVE * 0.8  # uvicorn's timer, not ours
            assert s.stalled() == 0

    run(test)


@pytest.mark.parametrize(
    "sent", [b"\r\n", b"POST /upload HT"], ids=["a blank line", "half a request line"]
)
def test_a_stall_after_a_response_and_some_idleness_is_closed_and_counted(sent: bytes) -> None:
    # Any byte cancels uvicorn's keep-alive timer, also a blank line that begins no request.
    async def test() -> None:
        async with served() as s:
            await s.send(HEAD + b"x" * 1000)
            assert (await s.answer(TIMEOUT * 5)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(2 * TIMEOUT)  # idle keep-alive, below uvicorn's timeout
            await s.send(sent)
            closed = await s.closed_after(KEEP_ALIVE + 1)
            assert closed is not None and closed < KEEP_ALIVE * 0.8
            assert s.stalled() == 1

    run(test)


def test_a_pause_of_uvicorns_reading_is_not_the_clients_silence() -> None:
    # The app does not read for 4 timeouts: past 64 KiB of body uvicorn stops reading, and the
    # client, which sent everything, waits on the server.
    async def test() -> None:
        async with served() as s:
            size = 1_000_000
            head = HEAD.replace(b"/upload", b"/slow-reader").replace(b"1000", str(size).encode())
            sending = asyncio.create_task(s.send(head + b"x" * size))
            try:
                answer = await s.answer(TIMEOUT * 20)
            finally:
                sending.cancel()  # done by now if the whole body arrived
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert answer.endswith(str(size).encode())  # the whole body was read
            assert s.stalled() == 0

    run(test)


def test_a_client_silent_once_uvicorn_reads_again_is_closed() -> None:
    # 66 000 bytes of 1 MB, then nothing: uvicorn pauses reading (over 64 KiB) until the app
    # reads, 4 timeouts later; from then on the silence is the client's.
    async def test() -> None:
        async with served() as s:
            head = HEAD.replace(b"/upload", b"/slow-reader").replace(b"1000", b"1000000")
            await s.send(head + b"x" * 65_000)
            await asyncio.sleep(TIMEOUT / 4)
            await s.send(b"x" * 1_000)
            closed = await s.closed_after(TIMEOUT * 10)
            assert closed is not None and closed > TIMEOUT * 4
            assert s.stalled() == 1
            assert s.app.last_message == {"type": "http.disconnect"}

    run(test)


def test_without_a_watch_in_the_lifespan_state_it_is_plain_uvicorn() -> None:
    async def test() -> None:
        async with served(watched=False) as s:
            await s.send(b"POST /upload HT")
            assert await s.closed_after(TIMEOUT * 3) is None
            assert s.stalled() == 0 and s.open() == 0

    run(test)
