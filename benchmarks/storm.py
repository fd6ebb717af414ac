"""A storm: heavy requests against light ones (issue #15), over real HTTP on loopback.

`heavy_clients` clients each post `images_per_request` 7000×7000 JPEGs (about 0.8 MB each), every
image with one 50×50 person box, so that each must be decoded at full resolution; one after the
other, for `duration_s`. Refused (503), a client waits the Retry-After seconds and tries again.
Meanwhile an ordinary 1280×720 group photo, without boxes (the service detects its persons), is
posted every `light_interval_s`, each on its own thread, whatever the earlier ones still wait for.

Measured: each answer's status and its latency as the client sees it, the latest answer against
its deadline (the service's DIPR_REQUEST_TIMEOUT_S), whether every 503 said Retry-After, and the
server's resident memory: idle before the storm, peak during it (from /proc/PID/status).

Bounded: in time (the storm, then at most `drain_s` for the requests in flight) and in count.
"""

import json
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import numpy as np

from dipr.benchmarks.photos import group_photo
from dipr.benchmarks.servers import reset_peak_rss, status_kib

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "tests/fixtures/photos"
GROUP = ("astronaut.jpg", "camera.jpg", "grace_hopper.jpg")  # one person each

STORM_SIDE = 7000  # pixels, both ways
STORM_QUALITY = 70  # a smooth picture: about 0.8 MB at 7000×7000
STORM_BOX = (100, 100, 150, 150)  # 50×50: the image must be decoded at full resolution
LIGHT_SIZE = (1280, 720)
CLIENT_TIMEOUT_S = 120.0  # generous: a late answer is seen late, not cut off by the client
MiB = 1024 * 1024


def storm_jpeg(side: int = STORM_SIDE, quality: int = STORM_QUALITY) -> bytes:
    """A side×side JPEG, the same bytes on every call: smooth colour ramps, which compress to
    about 0.8 MB at 7000×7000. Cached in the temporary folder (encoding takes about a second)."""
    cache = Path(tempfile.gettempdir()) / f"dipr-storm-{side}-q{quality}.jpg"
    if cache.is_file():
        return cache.read_bytes()
    ramp = np.linspace(0, 255, side, dtype=np.float32).astype(np.uint8)
    image = np.empty((side, side, 3), np.uint8)
    image[..., 0] = ramp[np.newaxis, :]  # blue: left to right
    image[..., 1] = ramp[:, np.newaxis]  # green: top to bottom
    image[..., 2] = 255 - ramp[np.newaxis, :]  # red: right to left
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    data = encoded.tobytes()
    partial = cache.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(data)
    partial.replace(cache)  # atomic: a concurrent reader sees all of it or nothing
    return data


def light_photo(size: tuple[int, int] = LIGHT_SIZE) -> bytes:
    """An ordinary photo of `size` (width, height) with three persons: the fixture photos side by
    side, scaled to fit and centred on grey."""
    width, height = size
    group = cv2.imdecode(np.frombuffer(group_photo(PHOTOS, GROUP, height), np.uint8), 1)
    scale = min(width / group.shape[1], height / group.shape[0])
    fitted = cv2.resize(
        group,
        (round(group.shape[1] * scale), round(group.shape[0] * scale)),
        interpolation=cv2.INTER_AREA,
    )
    canvas = np.full((height, width, 3), 128, np.uint8)
    top, left = (height - fitted.shape[0]) // 2, (width - fitted.shape[1]) // 2
    canvas[top : top + fitted.shape[0], left : left + fitted.shape[1]] = fitted
    ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return encoded.tobytes()


def available_mib() -> float:
    """MemAvailable of /proc/meminfo, MiB (infinite where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (connection error or still waiting when the storm ended)
    latency_s: float  # from sending the request to the end of its answer, client side
    retry_after: str | None = None  # the header, on a 503
    persons: int = 0  # persons found in all images (200 only)
    error: str = ""  # the transport error, when status is 0
    unanswered: bool = False  # status 0: still waiting when the drain ended (late, if nothing else)


@dataclass(frozen=True)
class StormReport:
    url: str
    heavy_clients: int
    images_per_request: int
    duration_s: float  # the storm: heavy clients and prober both
    light_interval_s: float
    request_timeout_s: float  # the service's deadline per request
    storm_jpeg_bytes: int
    light_jpeg_bytes: int
    light: tuple[Answer, ...]  # in the order they were sent
    heavy: tuple[Answer, ...]  # in the order they ended (the unanswered ones last)
    idle_rss_mib: float  # VmRSS after a warm-up light request, before the storm
    decode_budget_mp: float  # the service's, from its metrics
    peak_rss_mib: float  # the most VmRSS seen during the storm and its drain
    peak_source: str  # "VmHWM" (reset before the storm) or "VmRSS sampled"
    aborted: str = ""  # why the storm was cut short (memory cap), or ""
    wall_s: float = 0.0
    heavy_counts: Mapping[int, int] = field(default_factory=dict)  # status → answers

    @property
    def light_latencies_s(self) -> list[float]:
        return [a.latency_s for a in self.light]

    @property
    def light_statuses(self) -> list[int]:
        return [a.status for a in self.light]

    @property
    def light_p95_s(self) -> float:
        return percentile(self.light_latencies_s, 95)

    @property
    def light_p50_s(self) -> float:
        return percentile(self.light_latencies_s, 50)

    @property
    def answers(self) -> list[Answer]:
        return [*self.light, *self.heavy]

    @property
    def statuses(self) -> Counter[int]:
        """Every answer, light and heavy (0: none came)."""
        return Counter(a.status for a in self.answers)

    @property
    def latest_vs_deadline_s(self) -> float:
        """The latest answer that is not a 503, its client-measured latency minus the deadline
        (≤ 0.5 s is the goal). A request that got none (a connection error, or still waiting
        when the drain ended) counts with how long it waited: nothing came by then either."""
        late = [a.latency_s for a in self.answers if a.status != 503]
        return max(late, default=0.0) - self.request_timeout_s

    @property
    def retry_after_on_every_503(self) -> bool:
        return all(_seconds(a.retry_after) is not None for a in self.answers if a.status == 503)

    @property
    def lost(self) -> int:
        """Requests with no answer: a connection error, or still waiting after the drain."""
        return sum(1 for a in self.answers if a.status == 0)

    @property
    def unanswered(self) -> int:
        return sum(1 for a in self.answers if a.unanswered)

    @property
    def heavy_images_done(self) -> int:
        return sum(self.images_per_request for a in self.heavy if a.status == 200)

    def memory_limit_mib(self) -> float:
        """The goal: peak ≤ 2 × idle + the decode budget's decoded pixels (3 bytes each)."""
        return 2 * self.idle_rss_mib + self.decode_budget_mp * 1e6 * 3 / MiB

    def summary(self) -> str:
        """A few lines for a person (or a test's output)."""
        light = Counter(self.light_statuses)
        lines = [
            f"storm: {self.heavy_clients} clients × {self.images_per_request} images of "
            f"{STORM_SIDE}×{STORM_SIDE} ({self.storm_jpeg_bytes / 1e6:.2f} MB each) for "
            f"{self.duration_s:.0f} s; a 1280×720 photo every {self.light_interval_s:g} s; "
            f"deadline {self.request_timeout_s:g} s; {self.wall_s:.0f} s in all",
            f"light: {len(self.light)} requests, statuses {dict(sorted(light.items()))}, "
            f"p50 {self.light_p50_s:.2f} s, p95 {self.light_p95_s:.2f} s, "
            f"max {max(self.light_latencies_s, default=0.0):.2f} s",
            f"heavy: {len(self.heavy)} answers, statuses {dict(sorted(self.heavy_counts.items()))}"
            f", {self.heavy_images_done} images done",
            f"latest answer vs deadline: {self.latest_vs_deadline_s:+.2f} s; unanswered "
            f"{self.unanswered}, lost {self.lost}; Retry-After on every 503: "
            f"{self.retry_after_on_every_503}",
            f"server RSS: idle {self.idle_rss_mib:.0f} MiB, peak {self.peak_rss_mib:.0f} MiB "
            f"({self.peak_source}); goal < 2 × idle + {self.decode_budget_mp:.0f} MP × 3 B = "
            f"{self.memory_limit_mib():.0f} MiB"
            + (f"; ABORTED: {self.aborted}" if self.aborted else ""),
        ]
        return "\n".join(lines)

    def markdown_row(self) -> str:
        """One row of the table `markdown_header()` heads (for the README)."""
        light = Counter(self.light_statuses)
        limit = f"{self.memory_limit_mib():.0f}"
        return (
            f"| {self.heavy_clients} × {self.images_per_request} | {self.duration_s:.0f} s | "
            f"{self.light_p95_s:.2f} s | {_counts(light)} | {_counts(self.heavy_counts)} | "
            f"{self.latest_vs_deadline_s:+.2f} s | {self.lost} | {self.idle_rss_mib:.0f} | "
            f"{self.peak_rss_mib:.0f} | {limit} |"
        )


def markdown_header() -> str:
    return (
        "| heavy clients × images | storm | light p95 | light statuses | heavy statuses | "
        "latest vs deadline | lost | idle RSS, MiB | peak RSS, MiB | RSS goal, MiB |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )


def served_decode_budget_mp(client: httpx.Client, url: str) -> float:
    """The service's decode budget, as its /metrics says."""
    for line in client.get(f"{url}/metrics").text.splitlines():
        if line.startswith("dipr_decode_budget_megapixels "):
            return float(line.split()[1])
    raise RuntimeError(f"{url}/metrics has no dipr_decode_budget_megapixels")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (linear between order statistics); NaN for none."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def _counts(counts: Mapping[int, int]) -> str:
    return ", ".join(f"{n} × {status or 'none'}" for status, n in sorted(counts.items()))


def _seconds(value: str | None) -> float | None:
    """Retry-After as delay-seconds; None when absent or not a number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _post(
    client: httpx.Client,
    url: str,
    files: list[tuple[str, tuple[str, bytes, str]]],
    data: dict[str, str] | None,
) -> Answer:
    started = time.monotonic()
    try:
        response = client.post(f"{url}/pose", files=files, data=data)
    except httpx.HTTPError as error:
        return Answer(0, time.monotonic() - started, error=repr(error)[:300])
    latency = time.monotonic() - started
    persons = 0
    if response.status_code == 200:
        try:
            persons = sum(len(r["persons"]) for r in response.json()["results"])
        except (ValueError, KeyError, TypeError):
            persons = -1  # a 200 that is not a pose answer
    return Answer(response.status_code, latency, response.headers.get("retry-after"), persons)


class _Record:
    """The answers so far, and the requests sent and not yet answered (with when each was sent),
    under one lock: a request is in one or the other."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.light: dict[int, Answer] = {}
        self.heavy: list[Answer] = []
        self._waiting: dict[int, tuple[int | None, float]] = {}  # key → (light index, sent)
        self._next = 0
        self._closed = False

    def send(self, light_index: int | None = None) -> int:
        with self.lock:
            self._next += 1
            self._waiting[self._next] = (light_index, time.monotonic())
            return self._next

    def answered(self, key: int, answer: Answer) -> None:
        with self.lock:
            if self._closed:
                return
            light_index, _ = self._waiting.pop(key)
            if light_index is None:
                self.heavy.append(answer)
            else:
                self.light[light_index] = answer

    def close(self) -> tuple[tuple[Answer, ...], tuple[Answer, ...]]:
        """Light and heavy answers, each request still waiting as an unanswered one; later
        answers are not recorded."""
        with self.lock:
            now = time.monotonic()
            light, heavy = dict(self.light), list(self.heavy)
            for light_index, sent in self._waiting.values():
                waiting = Answer(0, now - sent, error="no answer yet", unanswered=True)
                if light_index is None:
                    heavy.append(waiting)
                else:
                    light[light_index] = waiting
            self._closed = True
        return tuple(light[i] for i in sorted(light)), tuple(heavy)


def run_storm(
    url: str,
    service_pid: int,
    heavy_clients: int = 8,
    images_per_request: int = 16,
    duration_s: float = 40.0,
    light_interval_s: float = 2.0,
    request_timeout_s: float = 10.0,
    drain_s: float | None = None,
    abort_rss_mib: float | None = None,
    sample_interval_s: float = 0.05,
) -> StormReport:
    """Run the storm against the service at `url` (its process `service_pid`, on this machine,
    for its memory) and report. `request_timeout_s`: the service's DIPR_REQUEST_TIMEOUT_S.
    `drain_s`: the longest wait after the storm for the requests in flight (default: the
    deadline + 20 s; those still waiting then are reported unanswered). `abort_rss_mib`: when
    the server's resident memory passes it, the server is killed (SIGKILL) to spare the machine
    and the storm ends, reported in `aborted`."""
    began = time.monotonic()
    drain_s = request_timeout_s + 20.0 if drain_s is None else drain_s
    heavy_jpeg, light_jpeg = storm_jpeg(), light_photo()
    heavy_files = [
        ("image", (f"storm-{i}.jpg", heavy_jpeg, "image/jpeg")) for i in range(images_per_request)
    ]
    heavy_data = {"boxes": json.dumps([[list(STORM_BOX)]] * images_per_request)}
    light_files = [("image", ("photo.jpg", light_jpeg, "image/jpeg"))]

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    record = _Record()
    stop = threading.Event()  # no new requests
    sampled = threading.Event()  # the sampler may end
    aborted: list[str] = []

    with httpx.Client(timeout=CLIENT_TIMEOUT_S, limits=limits) as client:
        # Warm-up: the light path once (lazy initialisation is not the storm's), then idle.
        warm = _post(client, url, light_files, None)
        if warm.status != 200:
            raise RuntimeError(f"the warm-up request got {warm.status} {warm.error}")
        time.sleep(0.5)
        budget = served_decode_budget_mp(client, url)
        idle_kib = status_kib(service_pid, "VmRSS")
        hwm_reset = reset_peak_rss(service_pid)
        peak_kib = [idle_kib]

        def sample() -> None:
            while not sampled.is_set():
                try:
                    rss = status_kib(service_pid, "VmRSS")
                except (OSError, KeyError):
                    return  # the server is gone
                peak_kib[0] = max(peak_kib[0], rss)
                if abort_rss_mib is not None and rss / 1024 > abort_rss_mib:
                    aborted.append(
                        f"server RSS {rss / 1024:.0f} MiB passed {abort_rss_mib:.0f} MiB: killed"
                    )
                    stop.set()
                    os.kill(service_pid, signal.SIGKILL)
                    return
                time.sleep(sample_interval_s)

        def heavy_client() -> None:
            while not stop.is_set():
                key = record.send()
                answer = _post(client, url, heavy_files, heavy_data)
                record.answered(key, answer)
                if answer.status == 503:
                    stop.wait(_seconds(answer.retry_after) or 1.0)
                elif answer.status == 0:
                    stop.wait(0.5)  # no spinning on a refused connection

        def light_request(index: int) -> None:
            key = record.send(index)
            record.answered(key, _post(client, url, light_files, None))

        sampler = threading.Thread(target=sample, name="storm-rss", daemon=True)
        sampler.start()
        threads = [
            threading.Thread(target=heavy_client, name=f"storm-heavy-{i}", daemon=True)
            for i in range(heavy_clients)
        ]
        for thread in threads:
            thread.start()
        storm_began = time.monotonic()
        probes = 0
        # Midway through each interval (the first once the storm is on), on schedule whatever
        # the earlier probes still wait for.
        while not stop.is_set() and (probes + 0.5) * light_interval_s < duration_s:
            sent_at = storm_began + (probes + 0.5) * light_interval_s
            if stop.wait(max(0.0, sent_at - time.monotonic())):
                break
            probe = threading.Thread(
                target=light_request, args=(probes,), name=f"storm-light-{probes}", daemon=True
            )
            probe.start()
            threads.append(probe)
            probes += 1
        stop.wait(max(0.0, storm_began + duration_s - time.monotonic()))
        stop.set()
        drain_until = time.monotonic() + drain_s
        for thread in threads:
            thread.join(max(0.0, drain_until - time.monotonic()))
        light, heavy = record.close()
        sampled.set()
        sampler.join(5)
        peak_source = "VmRSS sampled"
        if hwm_reset and not aborted:
            try:
                peak_kib[0] = max(peak_kib[0], status_kib(service_pid, "VmHWM"))
                peak_source = "VmHWM"
            except (OSError, KeyError):
                pass
        # Leaving closes the client: a request still waiting is abandoned, not awaited.
    return StormReport(
        url=url,
        heavy_clients=heavy_clients,
        images_per_request=images_per_request,
        duration_s=duration_s,
        light_interval_s=light_interval_s,
        request_timeout_s=request_timeout_s,
        storm_jpeg_bytes=len(heavy_jpeg),
        light_jpeg_bytes=len(light_jpeg),
        light=light,
        heavy=heavy,
        idle_rss_mib=idle_kib / 1024,
        decode_budget_mp=budget,
        peak_rss_mib=peak_kib[0] / 1024,
        peak_source=peak_source,
        aborted=aborted[0] if aborted else "",
        wall_s=time.monotonic() - began,
        heavy_counts=dict(Counter(a.status for a in heavy)),
    )
