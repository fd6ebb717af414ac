"""Logs and metrics without a server: the log formatters, the metrics' series, and the request
observer over a small ASGI app (httpx calls it in process)."""

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families

from dipr.service.http.middleware import RequestLimits, RequestObserver
from dipr.service.logs import (
    AccessBufferingHandler,
    JsonFormatter,
    TextFormatter,
    logging_config,
    request_id,
    write_waiting_lines,
)
from dipr.service.metrics import LATENCY_BUCKETS, ServiceMetrics, status_class

ACCESS_FIELDS = {
    "method": "POST",
    "path": "/pose",
    "status": 200,
    "duration_ms": 41.25,
    "client": "127.0.0.1",
}


def formatted(formatter: logging.Formatter, fields: dict[str, object], rid: str | None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger("dipr.test-observability")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = request_id.set(rid)
    try:
        logger.info("request", extra={"fields": fields})
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_text_access_line_carries_method_path_status_duration_and_request_id() -> None:
    line = formatted(TextFormatter(), ACCESS_FIELDS, "req-42")
    assert line.count("\n") == 1
    assert line.rstrip("\n").endswith(
        " INFO dipr.test-observability request method=POST path=/pose status=200 "
        "duration_ms=41.25 client=127.0.0.1 request_id=req-42"
    ), line


def test_text_values_that_are_not_plain_are_quoted_and_stay_on_one_line() -> None:
    fields = {"path": '/a b\n"c', "client": None, "flag": True}
    line = formatted(TextFormatter(), fields, None)
    assert line.count("\n") == 1, line
    assert 'path="/a b\\n\\"c" client=null flag=true' in line, line
    assert "request_id" not in line


def test_json_lines_keep_their_fields() -> None:
    entry = json.loads(formatted(JsonFormatter(), ACCESS_FIELDS, "req-42"))
    assert entry["message"] == "request" and entry["level"] == "info"
    assert {key: entry[key] for key in ACCESS_FIELDS} == ACCESS_FIELDS
    assert entry["request_id"] == "req-42"


def buffered_loggers(delay_s: float) -> tuple[io.StringIO, logging.Logger, logging.Logger]:
    """A buffering handler on a parent logger, and its access and other children."""
    stream = io.StringIO()
    handler = AccessBufferingHandler(stream, delay_s=delay_s)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    parent = logging.getLogger(f"dipr-test-buffering-{delay_s}")
    parent.handlers = [handler]
    parent.propagate = False
    parent.setLevel(logging.INFO)
    # The handler waits with the lines of "dipr.access" only: a child of that name, here.
    access = logging.Logger("dipr.access")
    access.parent = parent
    return stream, access, parent.getChild("service")


async def test_access_lines_wait_on_a_busy_loop_and_keep_their_order() -> None:
    stream, access, other = buffered_loggers(delay_s=0.05)
    access.info("first")
    access.info("second")
    assert stream.getvalue() == ""  # waiting: one write for both, soon
    await asyncio.sleep(0.15)
    assert stream.getvalue() == "dipr.access first\ndipr.access second\n"
    access.info("third")
    other.warning("a warning")  # never late, and after what came before it
    assert stream.getvalue().splitlines()[2:] == [
        "dipr.access third",
        "dipr-test-buffering-0.05.service a warning",
    ]
    access.info("fourth")
    write_waiting_lines(access)  # the service went idle
    assert stream.getvalue().endswith("dipr.access fourth\n")


def test_access_lines_off_an_event_loop_are_written_at_once() -> None:
    stream, access, _ = buffered_loggers(delay_s=60)
    access.info("no loop here")
    assert stream.getvalue() == "dipr.access no loop here\n"


def test_the_log_format_setting_picks_the_formatter() -> None:
    assert logging_config("text")["formatters"]["default"] == {"()": TextFormatter}
    assert logging_config("json")["formatters"]["default"] == {"()": JsonFormatter}


def samples(exposition: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    ]


def test_latency_buckets_resolve_one_to_three_seconds() -> None:
    between = [b for b in LATENCY_BUCKETS if 1.0 <= b <= 3.0]
    assert between == [1.0, 1.25, 1.5, 2.0, 2.5, 3.0]
    assert len(LATENCY_BUCKETS) <= 20
    assert [status_class(s) for s in (200, 301, 413, 499, 503)] == [
        "2xx",
        "3xx",
        "4xx",
        "4xx",
        "5xx",
    ]


def test_request_duration_by_status_class_and_no_created_series() -> None:
    metrics = ServiceMetrics()
    metrics.request_done("POST", "/pose", 200, 1.3)
    metrics.request_done("POST", "/pose", 503, 0.001)
    metrics.rejected.labels("overloaded").inc()
    exposition = metrics.exposition()[0].decode()
    assert "_created" not in exposition
    found = samples(exposition)
    count = {
        labels["status"]: value
        for name, labels, value in found
        if name == "dipr_request_duration_seconds_count"
    }
    assert count == {"2xx": 1.0, "5xx": 1.0}
    # 1.3 s lands between 1.25 and 1.5, not somewhere in 1 – 2.5.
    answers = {
        labels["le"]: value
        for name, labels, value in found
        if name == "dipr_request_duration_seconds_bucket" and labels["status"] == "2xx"
    }
    assert (answers["1.25"], answers["1.5"]) == (0.0, 1.0)
    requests = {
        labels["status"]: value
        for name, labels, value in found
        if name == "dipr_http_requests_total"
    }
    assert requests == {"200": 1.0, "503": 1.0}


MULTIPROCESS_SCRIPT = """
from dipr.service.metrics import ServiceMetrics
metrics = ServiceMetrics()
metrics.request_done("POST", "/pose", 200, 0.2)
metrics.persons.inc()
print(metrics.exposition()[0].decode())
"""


def test_multiprocess_mode_has_no_created_series_either(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR (several workers) the values go through files; read at
    import, so in a process of its own."""
    environment = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert list(tmp_path.iterdir()), "not in multiprocess mode"
    assert "_created" not in result.stdout
    assert 'dipr_request_duration_seconds_count{route="/pose",status="2xx"} 1.0' in result.stdout
    assert "dipr_persons_total 1.0" in result.stdout


def observed_app(metrics: ServiceMetrics, max_bytes: int) -> FastAPI:
    app = FastAPI()

    @app.post("/pose")
    async def pose(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/pose/render")
    async def render(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(RequestLimits, max_bytes=max_bytes)
    app.add_middleware(RequestObserver, metrics=metrics)
    return app


async def test_refusals_before_routing_are_labelled_with_the_route_they_were_sent_to() -> None:
    metrics = ServiceMetrics()
    app = observed_app(metrics, max_bytes=100)
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.post("/pose", content=b"x" * 10)).status_code == 200
        for path in ("/pose", "/pose/render", "/elsewhere", "/pose/extra"):
            response = await client.post(path, content=b"x" * 101)
            assert response.status_code == 413, path
        assert (await client.get("/broken")).status_code == 500
    found = samples(metrics.exposition()[0].decode())
    requests = {
        (labels["route"], labels["status"]): value
        for name, labels, value in found
        if name == "dipr_http_requests_total"
    }
    assert requests == {
        ("/pose", "200"): 1.0,
        ("/pose", "413"): 1.0,
        ("/pose/render", "413"): 1.0,
        ("unmatched", "413"): 2.0,
        ("/broken", "500"): 1.0,
    }
    timed = {
        (labels["route"], labels["status"]): value
        for name, labels, value in found
        if name == "dipr_request_duration_seconds_count"
    }
    assert timed == {
        ("/pose", "2xx"): 1.0,
        ("/pose", "4xx"): 1.0,
        ("/pose/render", "4xx"): 1.0,
        ("unmatched", "4xx"): 2.0,
        ("/broken", "5xx"): 1.0,
    }
