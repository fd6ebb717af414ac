"""Heavy requests over real HTTP to a real `dipr serve`: admission by cost refuses at once what
does not fit the decode budget, light requests still get in, and a request's deadline bounds its
answer whatever it waits for, the work queued for it dropped. (The storm of many such requests:
tests/test_storm.py.)"""

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dipr.benchmarks.storm import STORM_BOX, storm_jpeg
from tests.helpers.service_process import ServiceProcess, service_process

TIMEOUT_S = 1.0
LATE_S = 0.5  # the goal: an answer by its deadline + 0.5 s
BUDGET_MP = 200.0  # a heavy request (16 × 55 MP) is admitted alone; light: at most 12.5 MP
PHOTO = Path(__file__).parent / "fixtures/photos/astronaut.jpg"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("deadlines") / "serve.log"
    with service_process(
        log,
        request_timeout_s=TIMEOUT_S,
        client_timeout_s=5,
        decode_budget_mp=BUDGET_MP,
        cpu_workers=1,  # a heavy request's 16 decodes take seconds, well past the deadline
    ) as service:
        yield service


def metric(url: str, series: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def decoded_images(url: str) -> float:
    return metric(url, 'dipr_stage_duration_seconds_count{stage="decode"}')


def post_heavy(url: str, count: int = 16) -> tuple[httpx.Response, float]:
    """`count` images of 7000×7000 with a 50×50 box each: 0.15–0.3 s of decoding each."""
    files = [("image", (f"{i}.jpg", storm_jpeg(), "image/jpeg")) for i in range(count)]
    boxes = json.dumps([[list(STORM_BOX)]] * count)
    started = time.monotonic()
    response = httpx.post(f"{url}/pose", files=files, data={"boxes": boxes}, timeout=60)
    return response, time.monotonic() - started


def test_what_does_not_fit_the_budget_is_refused_at_once_and_light_requests_still_get_in(
    service: ServiceProcess,
) -> None:
    refused_before = metric(service.url, 'dipr_overloaded_total{cause="decode_budget"}')
    first: list[httpx.Response] = []
    heavy = threading.Thread(target=lambda: first.append(post_heavy(service.url)[0]))
    heavy.start()
    in_flight = 'dipr_decode_in_flight_megapixels{lane="heavy"}'
    until = time.monotonic() + 10
    while metric(service.url, in_flight) == 0 and time.monotonic() < until:
        time.sleep(0.02)
    assert metric(service.url, in_flight) > BUDGET_MP  # admitted alone, larger than its lane
    second, latency = post_heavy(service.url, count=2)  # 110 MP: does not fit beside it
    assert second.status_code == 503, second.text
    assert second.json()["error"]["code"] == "overloaded" and "budget" in second.text
    assert int(second.headers["retry-after"]) >= 1
    assert latency < 1.0  # at once, not after waiting
    photo = httpx.post(
        f"{service.url}/pose", files=[("image", ("a.jpg", PHOTO.read_bytes(), "image/jpeg"))]
    )
    assert photo.status_code == 200 and photo.json()["results"][0]["persons"]
    heavy.join(30)
    assert first and first[0].status_code == 504  # seconds of decoding, a 1 s deadline
    refused = metric(service.url, 'dipr_overloaded_total{cause="decode_budget"}')
    assert refused - refused_before == 1
    assert metric(service.url, in_flight) == 0  # all given back


def test_a_request_whose_deadline_passes_while_decoding_gets_504_and_the_rest_is_dropped(
    service: ServiceProcess,
) -> None:
    count = 16
    time.sleep(0.5)  # what an earlier test left running ends
    before = decoded_images(service.url)
    response, latency = post_heavy(service.url, count)
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert latency <= TIMEOUT_S + LATE_S, latency
    at_answer = decoded_images(service.url)
    time.sleep(1.0)  # the decode running when the deadline passed ends; no other starts
    after = decoded_images(service.url)
    assert after - at_answer <= 1, f"{after - at_answer} decoded after the answer"
    assert 0 < after - before < count, f"{after - before} of {count} images were decoded"
    # The service goes on.
    assert httpx.get(f"{service.url}/health/ready").status_code == 200


def test_an_upload_slower_than_the_deadline_gets_504_by_then(service: ServiceProcess) -> None:
    host, port = service.url.removeprefix("http://").split(":")
    body = b"\xff" * 100_000
    with socket.create_connection((host, int(port))) as slow:
        slow.sendall(
            b"POST /pose HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        started = time.monotonic()
        slow.settimeout(0.05)
        answer = b""
        for offset in range(0, len(body), 1000):  # 100 chunks, 0.1 s apart: 10 s in all
            try:
                answer = slow.recv(65536)
                break
            except TimeoutError:
                pass
            try:
                slow.sendall(body[offset : offset + 1000])
            except OSError:  # the server answered and closed
                break
            time.sleep(0.05)
        latency = time.monotonic() - started
        slow.settimeout(5)
        answer = answer or slow.recv(65536)
    assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    assert latency <= TIMEOUT_S + LATE_S, latency
