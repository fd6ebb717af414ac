"""How batches form under load with one inference worker (the GPU layout): a deep queue makes full
batches, not quarter ones. Real HTTP on loopback, the default model on CPU."""

import asyncio
import re
import time

import httpx

from tests.helpers.paths import PHOTOS
from tests.helpers.serving import running_service

CLIENTS = 64
SECONDS = 6.0


def pose_batches(metrics: str) -> tuple[float, float]:
    """(crops, batches) the pose model ran so far."""

    def value(series: str) -> float:
        found = re.search(rf'^dipr_batch_size_{series}{{model="pose"}} (\S+)$', metrics, re.M)
        return float(found.group(1)) if found else 0.0

    return value("sum"), value("count")


def test_one_inference_worker_under_64_clients_forms_batches_of_at_least_half_the_cap() -> None:
    photo = (PHOTOS / "astronaut.jpg").read_bytes()
    with running_service(inference_workers=1, detect=False) as url:
        before = pose_batches(httpx.get(f"{url}/metrics").text)

        async def client(http: httpx.AsyncClient, until: float) -> list[int]:
            statuses = []
            while time.monotonic() < until:
                answer = await http.post(
                    f"{url}/pose", content=photo, headers={"content-type": "image/jpeg"}
                )
                statuses.append(answer.status_code)
            return statuses

        async def load() -> list[int]:
            limits = httpx.Limits(max_connections=CLIENTS)
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:
                until = time.monotonic() + SECONDS
                answers = await asyncio.gather(*(client(http, until) for _ in range(CLIENTS)))
            return [status for statuses in answers for status in statuses]

        statuses = asyncio.run(load())
        crops, batches = (
            a - b
            for a, b in zip(pose_batches(httpx.get(f"{url}/metrics").text), before, strict=True)
        )
    assert set(statuses) == {200}, set(statuses)
    assert batches > 0
    mean = crops / batches
    print(f"one worker, {CLIENTS} clients: mean batch {mean:.1f} ({crops:.0f} crops)")
    # Today's CPU default (two workers) cuts a deep queue in quarters for its second session; with
    # one worker there is none, and a batch takes what queued: up to 16.
    assert mean >= 8, f"mean batch {mean:.1f} of 16 ({crops:.0f} crops in {batches:.0f} batches)"
