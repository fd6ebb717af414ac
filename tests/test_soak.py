"""Soak: 10,000 mixed valid and invalid requests, 8 at a time, to `dipr serve` as a child process.

Every request must get its answer (200 for a valid one, its 4xx for each kind of invalid one):
none lost, none with another status. The server's resident memory after the whole run may be at
most 10 % above its level after the first 1,000 requests (the warm-up).

The pose model is MoveNet Lightning exported for the test (the service code is the same as for
the default Thunder; Lightning is about 4× faster on CPU, which keeps 10,000 requests in about a
minute on 2 cores), and every third valid request comes without boxes, through the detector.
Without torch to export it, the default model serves, with fewer valid ones.
"""

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.helpers.paths import PHOTOS
from tests.helpers.service_process import ServiceProcess, service_process

REQUESTS = 10_000
WARM_UP = 1_000
ROUND = 1_000  # memory is read between rounds
CONCURRENCY = 8
TIME_LIMIT_S = 300.0  # for the 10,000 requests; about a minute on 2 cores
RSS_GROWTH_LIMIT = 0.10


@dataclass(frozen=True)
class Kind:
    name: str
    status: int
    method: str = "POST"
    path: str = "/pose"
    files: list | None = None
    data: dict[str, str] | None = None
    content: bytes | None = None
    content_type: str | None = None


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def kinds() -> tuple[list[Kind], list[Kind]]:
    """The valid requests (every third without boxes: the detector's path) and the invalid ones,
    each with the status it must get."""
    photo = cv2.cvtColor(cv2.imread(str(PHOTOS / "astronaut.jpg")), cv2.COLOR_BGR2RGB)
    small = png(cv2.resize(photo, (64, 64), interpolation=cv2.INTER_AREA))
    bomb = bytearray(small)
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR: 100000 × 100000

    def image(data: bytes, content_type: str = "image/png") -> list:
        return [("image", ("x.png", data, content_type))]

    boxed = Kind("valid", 200, files=image(small), data={"boxes": "[[[4, 2, 60, 64]]]"})
    valid = [boxed, boxed, Kind("valid-no-boxes", 200, files=image(small))]
    invalid = [
        Kind("junk-jpeg", 400, content=b"\x00junk" * 20, content_type="image/jpeg"),
        Kind("empty-part", 400, files=image(b"")),
        Kind("truncated-png", 400, files=image(small[: len(small) // 2])),
        Kind("bomb-header", 413, files=image(bytes(bomb))),
        Kind("too-many-images", 413, files=image(small) * 5),
        Kind("text-body", 415, content=b"hello", content_type="text/plain"),
        Kind("gif", 415, files=image(b"GIF89a" + bytes(20), "image/gif")),
        Kind("boxes-not-json", 422, files=image(small), data={"boxes": "[[["}),
        Kind("box-nan", 422, files=image(small), data={"boxes": "[[[0, 0, NaN, 9]]]"}),
        Kind("box-outside", 422, files=image(small), data={"boxes": "[[[100, 0, 120, 9]]]"}),
        Kind("no-image-field", 422, files=[("other", ("x.png", small, "image/png"))]),
        Kind("raw-not-boolean", 422, files=image(small), data={}, path="/pose?raw=maybe"),
        Kind("unknown-route", 404, method="GET", path="/nope"),
    ]
    return valid, invalid


def schedule(valid_every: int) -> list[Kind]:
    """REQUESTS requests: every `valid_every`-th valid, the invalid kinds in turn in between."""
    valid, invalid = kinds()
    plan, turn = [], 0
    for i in range(REQUESTS):
        if i % valid_every == 0:
            plan.append(valid[(i // valid_every) % len(valid)])
        else:
            plan.append(invalid[turn % len(invalid)])
            turn += 1
    return plan


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path | None, int]:
    """(model path or None for the default, send a valid request every N): see the docstring."""
    if importlib.util.find_spec("torch") is None:
        return None, 10
    path = tmp_path_factory.mktemp("soak") / "movenet-lightning.onnx"
    command = [sys.executable, "-m", "dipr.cli", "export", "--variant", "lightning"]
    command += ["-o", str(path), "--skip-parity"]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return path, 3


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model: tuple[Path | None, int]
) -> Iterator[ServiceProcess]:
    path, _ = model
    settings: dict[str, object] = {} if path is None else {"model_path": path}
    log = tmp_path_factory.mktemp("soak-server") / "server.log"
    with service_process(log, max_images=4, max_boxes=8, **settings) as process:
        yield process


async def send_all(url: str, plan: list[Kind], results: list[object]) -> None:
    """Send plan[i] for every i, CONCURRENCY at a time; results[i] = status or the exception."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(plan)):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                kind = plan[i]
                headers = {"content-type": kind.content_type} if kind.content_type else None
                try:
                    response = await client.request(
                        kind.method,
                        kind.path,
                        files=kind.files,
                        data=kind.data,
                        content=kind.content,
                        headers=headers,
                    )
                    results[i] = response.status_code
                except httpx.HTTPError as error:
                    results[i] = error

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def test_10000_mixed_requests_none_lost_and_memory_flat(
    server: ServiceProcess,
    model: tuple[Path | None, int],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path, valid_every = model
    plan = schedule(valid_every)
    results: list[object] = [None] * len(plan)
    rss_after_ready = server.rss_kib()
    rss = {}
    started = time.monotonic()
    for start in range(0, len(plan), ROUND):
        if time.monotonic() - started > TIME_LIMIT_S:
            break
        end = min(start + ROUND, len(plan))
        part: list[object] = [None] * (end - start)
        asyncio.run(send_all(server.url, plan[start:end], part))
        results[start:end] = part
        rss[end] = server.rss_kib()
    elapsed = time.monotonic() - started

    sent = sum(result is not None for result in results)
    lost = [(i, repr(r)) for i, r in enumerate(results) if r is not None and not isinstance(r, int)]
    wrong = Counter(
        (plan[i].name, r)
        for i, r in enumerate(results)
        if isinstance(r, int) and r != plan[i].status
    )
    rss_warm, rss_end = rss.get(WARM_UP, 0), rss.get(len(plan), 0)
    summary = {
        "model": "movenet-lightning (exported)" if path else "movenet-thunder (default)",
        "requests_sent": sent,
        "valid": sum(kind.status == 200 for kind in plan[:sent]),
        "lost": len(lost),
        "wrong_status": sum(wrong.values()),
        "seconds": round(elapsed, 1),
        "requests_per_s": round(sent / elapsed, 1),
        "rss_after_ready_mib": round(rss_after_ready / 1024, 1),
        "rss_after_warmup_mib": round(rss_warm / 1024, 1),
        "rss_at_end_mib": round(rss_end / 1024, 1),
        "rss_growth_after_warmup": round(rss_end / rss_warm - 1, 4) if rss_warm else None,
        "rss_every_1000_mib": [round(v / 1024, 1) for v in rss.values()],
    }
    summary_path = tmp_path_factory.getbasetemp() / "soak-summary.json"
    summary_path.write_text(json.dumps(summary, indent=1))
    print(f"\nsoak: {json.dumps(summary)} ({summary_path})")
    assert sent == REQUESTS, f"only {sent} requests in {TIME_LIMIT_S} s"
    assert not lost, lost[:10]
    assert not wrong, wrong
    assert rss_end <= rss_warm * (1 + RSS_GROWTH_LIMIT), summary
