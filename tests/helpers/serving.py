"""A real uvicorn server on a free loopback port, in a background thread, for the tests."""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from dipr.benchmarks.servers import free_port
from dipr.service.http.app import create_app
from dipr.service.settings import Settings


@contextmanager
def running_service(**settings: object) -> Iterator[str]:
    """Serve the app with these settings; yields the base URL once it is ready."""
    port = free_port()
    app = create_app(Settings(host="127.0.0.1", port=port, **settings))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(f"{url}/health/live", timeout=1).status_code == 200
                    and (httpx.get(f"{url}/health/ready", timeout=1).status_code in (200, 503))
                    and server.started
                ):
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise TimeoutError("the service did not start")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
