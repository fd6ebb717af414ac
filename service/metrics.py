"""Prometheus metrics, all prefixed `dipr_`.

With several worker processes, set PROMETHEUS_MULTIPROC_DIR (an empty folder) before start-up:
prometheus-client then keeps the values in files there and /metrics aggregates all workers.
No `_created` series: one more series for each label set of every counter and histogram, which
nothing here reads (the multiprocess collector never writes them).
"""

import contextlib
import os
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
)

disable_created_metrics()  # process-wide, read at every collection

# Seconds. Fine from 1 to 3 s, where a CPU's p99 lies under load: an interpolated quantile is
# off by at most a quarter or half of a second there, not by 1.5 s.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    1.25,
    1.5,
    2.0,
    2.5,
    3.0,
    5.0,
    10.0,
    30.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PERSON_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 16, 32, 64)


def status_class(status: int) -> str:
    """The latency histogram's `status` label: "2xx", "4xx", "5xx" (five values at most)."""
    return f"{status // 100}xx"


class ServiceMetrics:
    """The service's metrics. The two models' batchers report through `batcher_observer`, each
    under its own `model` label ("pose", "detector"); the pipeline through `stage_done`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        multi = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        r = self.registry
        self.requests = Counter(
            "dipr_http_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "dipr_request_duration_seconds",
            "Time from request to response, by route and status class (2xx, 4xx, 5xx): fast "
            "refusals do not hide slow answers",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_duration = Histogram(
            "dipr_stage_duration_seconds",
            "Time of one pipeline stage: per image for decode, letterbox and crop; per request "
            "for admit, detect and pose (waiting for a batch included)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "dipr_queue_wait_seconds",
            "Time an input (crop or letterboxed image) waited in its model's batch queue",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "dipr_inference_duration_seconds",
            "Time of one batched inference",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dipr_batch_size",
            "Inputs per inference batch",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_depth_gauge = Gauge(
            "dipr_queue_depth",
            "Inputs waiting for inference",
            ["model"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.queue_capacity = Gauge(
            "dipr_queue_capacity",
            "Inputs the queue holds before requests get 503 (DIPR_MAX_QUEUE, "
            "DIPR_DETECTOR_MAX_QUEUE)",
            ["model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.persons = Counter("dipr_persons", "Person crops estimated", registry=r)
        self.persons_per_image = Histogram(
            "dipr_persons_per_image",
            "Persons estimated in one image (boxes sent, or found by the detector)",
            buckets=PERSON_BUCKETS,
            registry=r,
        )
        self.images = Counter("dipr_images", "Images estimated", registry=r)
        self.rejected = Counter(
            "dipr_rejected", "Requests refused, by reason", ["reason"], registry=r
        )
        self.overloaded = Counter(
            "dipr_overloaded",
            "Requests refused with 503 because there was no room, by cause: decode_budget, "
            "pose_queue, detector_queue",
            ["cause"],
            registry=r,
        )
        self.decode_budget = Gauge(
            "dipr_decode_budget_megapixels",
            "Megapixels of decoding that may be admitted at once (DIPR_DECODE_BUDGET_MP)",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.decode_in_flight = Gauge(
            "dipr_decode_in_flight_megapixels",
            "Megapixels of decoding admitted and not yet done, by lane: light, heavy",
            ["lane"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.client_connections = Gauge(
            "dipr_client_connections",
            "HTTP connections open",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.stalled_connections = Counter(
            "dipr_stalled_connections_closed",
            "Connections closed because the client sent nothing of its request's headers or "
            "body for DIPR_CLIENT_TIMEOUT_S",
            registry=r,
        )
        self.model_info = Gauge(
            "dipr_model_info",
            "The models being served (value 1), by role: pose, detector",
            ["role", "name", "version", "provider"],
            multiprocess_mode="liveall",
            registry=r,
        )
        # Labelled children, looked up once: `labels()` takes a lock and builds its key on every
        # call, several times per request (the label values are few: routes, statuses, stages).
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._stage_children: dict[str, Histogram] = {}
        if multi:
            # Serve the aggregate of every worker's files, not this process's own values.
            self.exposition_registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition_registry)
        else:
            self.exposition_registry = self.registry

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        """One answered request: counted by its status, timed by its status class."""
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.request_duration.labels(route, status_class(status)),
            )
            self._request_children[key] = children
        count, duration = children
        count.inc()
        duration.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.exposition_registry), CONTENT_TYPE_LATEST

    def batcher_observer(self, model: str) -> "BatcherMetrics":
        return BatcherMetrics(self, model)

    # StageObserver
    def stage_done(self, stage: str, seconds: float) -> None:
        child = self._stage_children.get(stage)
        if child is None:
            child = self._stage_children[stage] = self.stage_duration.labels(stage)
        child.observe(seconds)

    # BudgetObserver
    def in_flight(self, lane: str, megapixels: float) -> None:
        self.decode_in_flight.labels(lane).set(megapixels)


class BatcherMetrics:
    """One model's batcher, reported under its `model` label (a BatchObserver)."""

    def __init__(self, metrics: ServiceMetrics, model: str) -> None:
        self._batch_size = metrics.batch_size.labels(model)
        self._inference = metrics.inference_duration.labels(model)
        self._queue_wait = metrics.queue_wait.labels(model)
        self._queue_depth = metrics.queue_depth_gauge.labels(model)
        self.capacity = metrics.queue_capacity.labels(model)

    def batch_done(self, size: int, queue_waits: list[float], seconds: float) -> None:
        self._batch_size.observe(size)
        self._inference.observe(seconds)
        for wait in queue_waits:
            self._queue_wait.observe(wait)

    def queue_depth(self, depth: int) -> None:
        self._queue_depth.set(depth)


@contextlib.contextmanager
def supervised_metrics(port: int, host: str) -> Iterator[None]:
    """DIPR_METRICS_PORT served by the process that supervises several serving processes (they
    leave it alone: DIPR_METRICS_PORT_SUPERVISED): the sum of every process's files in
    PROMETHEUS_MULTIPROC_DIR, as /metrics on the API port gives it."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    server, _ = start_http_server(port, host, registry)
    try:
        yield
    finally:
        server.shutdown()

