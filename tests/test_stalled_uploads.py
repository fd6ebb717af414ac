"""Clients that stop sending mid-request, against a real `dipr serve` over loopback: closed after
DIPR_CLIENT_TIMEOUT_S and counted, their file descriptors given back, while the service keeps
answering; a client that uploads slowly but steadily, and idle keep-alive, are left alone."""

import os
import re
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dipr.service.settings import Settings
from tests.helpers.paths import PHOTOS
from tests.helpers.service_process import ServiceProcess, service_process

CLIENT_TIMEOUT = 2.0  # DIPR_CLIENT_TIMEOUT_S of these tests
STALLED = 300  # stalled connections, a third of each kind
NGINX_CONF = Path(__file__).resolve().parents[1] / "docker" / "nginx" / "pose.conf"

POSE_HEAD = (
    b"POST /pose HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
)
STALLS = {
    "nothing": b"",
    "half the headers": b"POST /pose HTTP/1.1\r\nHost: x\r\nContent-Ty",
    "headers and 2 bytes of 100 KB": POSE_HEAD % 100_000 + b"\xff\xd8",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("stalled-uploads") / "server.log"
    with service_process(log, client_timeout_s=CLIENT_TIMEOUT) as running:
        yield running


def metric(url: str, name: str, labels: str = "") -> float:
    """One sample of /metrics, e.g. metric(url, "dipr_http_requests_total", 'status="499"')
    (0 if absent); with labels, the sum of the samples that carry them."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        sample = re.fullmatch(rf"{name}(\{{[^}}]*\}})? (\S+)", line)
        if sample is not None and labels in (sample.group(1) or ""):
            total += float(sample.group(2))
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def port_of(service: ServiceProcess) -> int:
    return int(service.url.rsplit(":", 1)[1])


def read_response(client: socket.socket, timeout: float) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length."""
    client.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        assert chunk, f"closed before an answer: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    assert length is not None, head
    while len(body) < int(length.group(1)):
        chunk = client.recv(65536)
        assert chunk, "closed in the middle of the answer"
        body += chunk
    return int(head.split()[1]), body


def wait_until_closed(
    clients: list[socket.socket], opened: list[float], deadline: float
) -> tuple[list[float | None], list[bytes]]:
    """Seconds from opening until the server closed each (None: still open at the deadline),
    and whatever bytes the server sent instead of closing."""
    closed: list[float | None] = [None] * len(clients)
    unexpected: list[bytes] = []
    with selectors.DefaultSelector() as selector:
        for index, client in enumerate(clients):
            client.setblocking(False)
            selector.register(client, selectors.EVENT_READ, index)
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                index = key.data
                try:
                    data = clients[index].recv(65536)
                except ConnectionResetError:
                    data = b""
                if data:
                    unexpected.append(data)
                    continue
                closed[index] = time.monotonic() - opened[index]
                selector.unregister(clients[index])
    return closed, unexpected


def test_stalled_clients_are_closed_counted_and_their_descriptors_freed(
    service: ServiceProcess,
) -> None:
    url, pid = service.url, service.pid
    assert httpx.get(f"{url}/health/ready").status_code == 200
    idle_fds = open_fds(pid)
    stalled_before = metric(url, "dipr_stalled_connections_closed_total")
    gone_before = metric(url, "dipr_http_requests_total", 'status="499"')

    # A connection that completes a request, then stays idle: uvicorn's keep-alive (5 s).
    kept_alive = socket.create_connection(("127.0.0.1", port_of(service)))
    kept_alive.sendall(b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(kept_alive, 10)[0] == 200
    idle_since = time.monotonic()

    kinds = list(STALLS.values())
    clients, opened = [], []
    for index in range(STALLED):
        client = socket.create_connection(("127.0.0.1", port_of(service)))
        if kinds[index % 3]:
            client.sendall(kinds[index % 3])
        clients.append(client)
        opened.append(time.monotonic())
    try:
        # They reached the server: it holds a descriptor for each.
        deadline = time.monotonic() + 1
        while open_fds(pid) < idle_fds + STALLED and time.monotonic() < deadline:
            time.sleep(0.02)
        held_fds = open_fds(pid)
        assert held_fds >= idle_fds + STALLED
        assert metric(url, "dipr_client_connections") >= STALLED

        # The service keeps answering meanwhile.
        assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
        photo = (PHOTOS / "astronaut.jpg").read_bytes()
        pose = httpx.post(
            f"{url}/pose", content=photo, headers={"content-type": "image/jpeg"}, timeout=30
        )
        assert pose.status_code == 200, pose.text
        assert pose.json()["results"][0]["persons"]
        answered_within = time.monotonic() - opened[-1]
        assert answered_within < CLIENT_TIMEOUT, "the checks did not run during the stall"

        closed, unexpected = wait_until_closed(clients, opened, opened[-1] + CLIENT_TIMEOUT + 5)
    finally:
        for client in clients:
            client.close()

    still_open = [list(STALLS)[i % 3] for i, seconds in enumerate(closed) if seconds is None]
    assert not still_open, f"{len(still_open)} not closed: {set(still_open)}"
    assert not unexpected, unexpected[:3]
    times = [seconds for seconds in closed if seconds is not None]
    assert min(times) >= CLIENT_TIMEOUT * 0.9 and max(times) <= CLIENT_TIMEOUT + 5

    # Idle keep-alive is not a stall: still open past the client timeout, and not counted.
    time.sleep(max(0.0, idle_since + CLIENT_TIMEOUT + 1 - time.monotonic()))
    kept_alive.setblocking(False)
    with pytest.raises(BlockingIOError):
        kept_alive.recv(1)  # nothing to read, and not closed
    kept_alive.close()

    stalled = metric(url, "dipr_stalled_connections_closed_total") - stalled_before
    assert stalled == STALLED
    # The stalled uploads' requests end quietly, as 499 (no one left to answer), not as 500s.
    assert metric(url, "dipr_http_requests_total", 'status="499"') - gone_before == STALLED // 3
    log = service.log.read_text(errors="replace")
    assert "Exception in ASGI application" not in log
    assert "unhandled error" not in log

    deadline = time.monotonic() + 5
    while open_fds(pid) > idle_fds + 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    after_fds = open_fds(pid)
    assert after_fds <= idle_fds + 5
    assert metric(url, "dipr_client_connections") <= 2  # this scrape (and a straggler)
    print(
        f"{STALLED} stalled: closed {min(times):.2f}–{max(times):.2f} s after opening "
        f"(timeout {CLIENT_TIMEOUT} s), counted {stalled:.0f}; descriptors idle {idle_fds}, "
        f"during the stall {held_fds}, after {after_fds}; /pose answered "
        f"{answered_within:.2f} s into the stall"
    )


def test_a_slow_but_steady_upload_is_not_cut(service: ServiceProcess) -> None:
    url = service.url
    stalled_before = metric(url, "dipr_stalled_connections_closed_total")
    photo = (PHOTOS / "astronaut.jpg").read_bytes()
    pieces = 7  # a piece every 0.5 s: 3 s in all, past the 2 s client timeout
    size = -(-len(photo) // pieces)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port_of(service))) as client:
        client.sendall(POSE_HEAD % len(photo))
        for start in range(0, len(photo), size):
            time.sleep(0.5)
            client.sendall(photo[start : start + size])
        status, body = read_response(client, 30)
    took = time.monotonic() - started
    assert status == 200, body
    assert took > CLIENT_TIMEOUT  # the upload lasted longer than the timeout
    assert metric(url, "dipr_stalled_connections_closed_total") == stalled_before
    print(f"upload of {len(photo)} bytes in {pieces} pieces over {took:.1f} s: {status}")


def test_worker_processes_watch_too(tmp_path: Path) -> None:
    """`--workers 2`: the protocol, given by import string, and its watch reach every worker."""
    with service_process(
        tmp_path / "server.log", ("--workers", "2"), client_timeout_s=1, intra_op_threads=1
    ) as workers:
        clients = []
        for index in range(12):
            client = socket.create_connection(("127.0.0.1", port_of(workers)))
            if index % 2:
                client.sendall(STALLS["headers and 2 bytes of 100 KB"])
            clients.append(client)
        opened = [time.monotonic()] * len(clients)
        try:
            closed, unexpected = wait_until_closed(clients, opened, opened[0] + 6)
        finally:
            for client in clients:
                client.close()
        assert all(seconds is not None for seconds in closed), closed
        assert not unexpected
        assert metric(workers.url, "dipr_stalled_connections_closed_total") == len(clients)


def test_nginx_closes_stalled_clients_after_the_services_default() -> None:
    """docker/nginx/pose.conf's client timeouts are DIPR_CLIENT_TIMEOUT_S's default."""
    default = Settings.model_fields["client_timeout_s"].default
    text = NGINX_CONF.read_text()
    for directive in ("client_header_timeout", "client_body_timeout"):
        setting = re.search(rf"^\s*{directive}\s+(\d+)s;", text, re.MULTILINE)
        assert setting is not None, directive
        assert float(setting.group(1)) == default
