"""The storm of issue #15: heavy requests must not starve light ones.

8 clients each post 16 JPEGs of 7000×7000 pixels (about 0.8 MB each), every image with one 50×50
person box so that it must be decoded at full resolution; meanwhile an ordinary 1280×720 photo,
without boxes (the service detects its persons), is posted every 2 s. `dipr serve` runs as a child
process (its memory is its own) with a 10 s deadline per request, every other setting its
default (the decode budget: a third of the deadline's decoding). The storm runs once (about a
minute in all on 2 cores); each goal is its own test:

- the light photo is answered 200, in ≤ 2 s at p95;
- no answer comes later than its deadline + 0.5 s;
- the server's peak resident memory stays under 2 × idle + the decode budget's decoded pixels;
- nothing accepted is lost: every answer is 200 or 504, every refusal 503 with Retry-After.

Real HTTP on loopback, a real server: timings on a shared 2-core machine are noisy, so the bounds
are the goals themselves, not tuned to one machine.
"""

from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from dipr.benchmarks.storm import (
    MiB,
    StormReport,
    available_mib,
    run_storm,
    served_decode_budget_mp,
)
from tests.helpers.service_process import service_process

HEAVY_CLIENTS = 8
IMAGES_PER_REQUEST = 16
STORM_S = 30.0  # 15 light photos
LIGHT_INTERVAL_S = 2.0
REQUEST_TIMEOUT_S = 10.0
LIGHT_P95_S = 2.0
LATE_S = 0.5  # an answer may come this long after its deadline
# The machine comes first: a server whose memory passes this many times its goal is killed, and
# the storm ends (reported as aborted; the memory goal fails, the others are judged on what
# came before).
ABORT_FACTOR = 1.5


@pytest.fixture(scope="module")
def storm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StormReport]:
    log = tmp_path_factory.mktemp("storm") / "serve.log"
    with service_process(
        log,
        request_timeout_s=REQUEST_TIMEOUT_S,
        drain_delay_s=0,
        shutdown_grace_s=5,  # the requests still waiting at the end are not waited for long
    ) as service:
        started_mib = service.rss_kib() / 1024
        budget = served_decode_budget_mp(httpx.Client(), service.url)
        goal = 2 * started_mib + budget * 1e6 * 3 / MiB
        abort = min(ABORT_FACTOR * goal, 0.6 * available_mib())
        report = run_storm(
            service.url,
            service.pid,
            heavy_clients=HEAVY_CLIENTS,
            images_per_request=IMAGES_PER_REQUEST,
            duration_s=STORM_S,
            light_interval_s=LIGHT_INTERVAL_S,
            request_timeout_s=REQUEST_TIMEOUT_S,
            drain_s=REQUEST_TIMEOUT_S + 10,
            abort_rss_mib=abort,
        )
        log_tail = service.log_tail(1500)
    print(f"\n{report.summary()}\nserver log (end):\n{log_tail}")
    yield report


def test_the_storm_ran(storm: StormReport) -> None:
    """The harness itself: heavy requests were sent, and every light photo was."""
    assert len(storm.heavy) >= HEAVY_CLIENTS, storm.summary()
    if not storm.aborted:  # (then the memory test fails)
        assert len(storm.light) == int(STORM_S / LIGHT_INTERVAL_S), storm.summary()


def test_light_photos_are_answered_200_within_2_s_at_p95(storm: StormReport) -> None:
    statuses = Counter(storm.light_statuses)
    assert statuses == {200: len(storm.light)}, f"light statuses {statuses}\n{storm.summary()}"
    assert all(a.persons > 0 for a in storm.light), "the detector found nobody in the light photo"
    assert storm.light_p95_s <= LIGHT_P95_S, (
        f"light p95 {storm.light_p95_s:.2f} s > {LIGHT_P95_S} s; latencies "
        f"{[round(s, 2) for s in storm.light_latencies_s]}\n{storm.summary()}"
    )


def test_no_answer_comes_later_than_its_deadline_and_half_a_second(storm: StormReport) -> None:
    assert storm.latest_vs_deadline_s <= LATE_S, (
        f"the latest answer came {storm.latest_vs_deadline_s:+.2f} s after its "
        f"{REQUEST_TIMEOUT_S:g} s deadline (at most +{LATE_S} s)\n{storm.summary()}"
    )


def test_peak_memory_stays_under_twice_idle_plus_the_decode_budget(storm: StormReport) -> None:
    limit = storm.memory_limit_mib()
    assert not storm.aborted, f"{storm.aborted}\n{storm.summary()}"
    assert storm.peak_rss_mib < limit, (
        f"peak RSS {storm.peak_rss_mib:.0f} MiB ≥ 2 × idle {storm.idle_rss_mib:.0f} MiB + "
        f"{storm.decode_budget_mp:.0f} MP × 3 B = {limit:.0f} MiB\n{storm.summary()}"
    )


def test_nothing_accepted_is_lost_and_refusals_say_when_to_retry(storm: StormReport) -> None:
    statuses = storm.statuses
    assert storm.lost == 0, (
        f"{storm.lost} requests got no answer: "
        f"{[a.error for a in storm.answers if a.status == 0][:3]}\n{storm.summary()}"
    )
    assert set(statuses) <= {200, 503, 504}, f"statuses {dict(statuses)}\n{storm.summary()}"
    assert storm.retry_after_on_every_503, (
        f"a 503 without Retry-After: {[a.retry_after for a in storm.answers if a.status == 503]}"
        f"\n{storm.summary()}"
    )
