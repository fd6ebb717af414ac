"""The front-end layout (DIPR_FRONTEND_PROCESSES): `dipr serve` as real processes on loopback, the
committed models, crops through shared memory to one inference process.

It serves what the one-process layout serves, batches crops of several front-ends together, fails
fast (503, unready) and heals when the inference process dies, stops without leaving shared
memory behind, and sends slot numbers, not images, between the processes."""

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from dipr.core.errors import DeadlineExceeded, InferenceFailed, Overloaded
from dipr.service import remote_inference
from dipr.service.crop_slab import SlotRuns
from dipr.service.inference_protocol import (
    CONTROL,
    REPLY_HEADER,
    decode_arrays,
    decode_error,
    encode_arrays,
    encode_error,
)
from dipr.service.remote_inference import RemoteInference
from tests.helpers.paths import PHOTOS
from tests.helpers.service_process import ServiceProcess, service_process

PHOTO_NAMES = ("astronaut.jpg", "camera.jpg", "grace_hopper.jpg")
CROP_BYTES = 256 * 256 * 3  # one input of the default model
BOXES = "[[[17.3, 11.4, 361.3, 508.7]]]"  # the astronaut's


def shared_segments() -> set[str]:
    """multiprocessing.shared_memory's segments (psm_*) in /dev/shm now."""
    return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}


def inference_pid(server_pid: int) -> int:
    """The inference process that `dipr serve` (server_pid) started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server_pid and b"dipr.service.inference_process" in command:
            return int(entry.name)
    raise LookupError(f"no inference process under {server_pid}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def keypoints(answer: httpx.Response) -> list[np.ndarray]:
    assert answer.status_code == 200, answer.text
    return [
        np.array([[k["x"], k["y"], k["score"]] for k in person["keypoints"]])
        for result in answer.json()["results"]
        for person in result["persons"]
    ]


@pytest.fixture(scope="module")
def two_frontends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("frontends") / "serve.log"
    with service_process(log, frontend_processes=2) as service:
        yield service


def test_front_ends_serve_the_keypoints_of_the_one_process_layout(
    two_frontends: ServiceProcess, tmp_path: Path
) -> None:
    requests = [
        {"files": {"image": (name, (PHOTOS / name).read_bytes(), "image/jpeg")}}
        for name in PHOTO_NAMES
    ]  # without boxes: the detector, then the pose model, both in the inference process
    boxed = (PHOTOS / "astronaut.jpg").read_bytes()
    requests.append({"files": {"image": ("a.jpg", boxed, "image/jpeg")}, "data": {"boxes": BOXES}})
    with service_process(tmp_path / "one.log") as one:
        expected = [keypoints(httpx.post(f"{one.url}/pose", timeout=60, **r)) for r in requests]
    for request, reference in zip(requests, expected, strict=True):
        for _ in range(2):  # most likely through both front-ends
            got = keypoints(httpx.post(f"{two_frontends.url}/pose", timeout=60, **request))
            assert len(got) == len(reference) >= 1
            for person, wanted in zip(got, reference, strict=True):
                np.testing.assert_allclose(person, wanted, atol=1e-3)
    model = httpx.get(f"{two_frontends.url}/v1/model").json()
    assert model["name"] == "movenet-thunder" and model["provider"] == "CPUExecutionProvider"
    assert model["detector"] is not None


def test_shared_memory_is_mapped_but_unlinked_once_both_sides_have_it(
    two_frontends: ServiceProcess,
) -> None:
    # Both front-ends are connected: their slabs (pose and detector each) are mapped in the
    # inference process, and their names are gone: nothing can leak in /dev/shm.
    assert httpx.get(f"{two_frontends.url}/health/ready").status_code == 200
    maps = Path(f"/proc/{inference_pid(two_frontends.pid)}/maps").read_text().splitlines()
    slabs = {line.split()[-2] for line in maps if "/dev/shm/psm_" in line}
    assert len(slabs) >= 4, maps
    assert all(line.endswith("(deleted)") for line in maps if "/dev/shm/psm_" in line)
    assert not {Path(name).name for name in slabs} & shared_segments()


def pose_batch_buckets(metrics: str) -> dict[str, float]:
    """The pose model's batch-size histogram: cumulative counts by upper bound."""
    buckets = {}
    for line in metrics.splitlines():
        if line.startswith('dipr_batch_size_bucket{le="') and 'model="pose"' in line:
            bound = line.split('le="')[1].split('"')[0]
            buckets[bound] = float(line.rsplit(" ", 1)[1])
    return buckets


def test_crops_of_two_front_ends_are_batched_together(tmp_path: Path) -> None:
    # Each front-end has 4 slots (max_queue 8 shared by 2): a batch of more than 4 crops holds
    # crops of both.
    limits = {"max_queue": 8, "max_boxes": 4, "max_images": 4, "max_batch_size": 8}
    photo = (PHOTOS / "astronaut.jpg").read_bytes()
    with service_process(
        tmp_path / "serve.log", frontend_processes=2, inference_workers=1, detect=False, **limits
    ) as service:

        async def load() -> list[int]:
            # A new connection per request: the kernel hands them to both front-ends.
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:

                async def client() -> list[int]:
                    statuses = []
                    until = time.monotonic() + 6
                    while time.monotonic() < until:
                        answer = await http.post(
                            f"{service.url}/pose",
                            files={"image": ("a.jpg", photo, "image/jpeg")},
                            data={"boxes": BOXES},
                        )
                        statuses.append(answer.status_code)
                        if answer.status_code == 503:  # this front-end's slots are taken
                            await asyncio.sleep(0.05)
                    return statuses

                answers = await asyncio.gather(*(client() for _ in range(12)))
            return [status for statuses in answers for status in statuses]

        statuses = asyncio.run(load())
        buckets = pose_batch_buckets(httpx.get(f"{service.url}/metrics").text)
    assert set(statuses) <= {200, 503} and statuses.count(200) > 10, statuses
    print(f"pose batches: {buckets}; {statuses.count(200)} answered, {statuses.count(503)} 503")
    assert buckets["+Inf"] - buckets["4.0"] > 0, buckets  # batches of 5 to 8 crops


def test_shutdown_stops_every_process_and_leaves_no_shared_memory(tmp_path: Path) -> None:
    before = shared_segments()
    with service_process(tmp_path / "serve.log", frontend_processes=2) as service:
        answer = httpx.post(
            f"{service.url}/pose",
            files={"image": ("a.jpg", (PHOTOS / "camera.jpg").read_bytes(), "image/jpeg")},
            timeout=60,
        )
        assert answer.status_code == 200
        inference = inference_pid(service.pid)
        service.server.send_signal(signal.SIGTERM)
        assert service.server.wait(60) == 0, service.log_tail()
    assert not alive(inference)
    assert shared_segments() <= before
    assert "Traceback" not in service.log_tail(100_000)
    assert "leaked" not in service.log_tail(100_000)  # the resource tracker's warning


def test_only_slot_numbers_and_small_results_cross_the_socket(
    two_frontends: ServiceProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client of the running inference process in this test: every message it sends is the
    fixed 26-byte struct, every reply a few hundred bytes per crop, while the crops (192 KiB
    each) went through shared memory."""
    sent: list[bytes] = []
    received: list[int] = []
    send, read = remote_inference._Link.send, remote_inference._read_reply

    def recording_send(link: remote_inference._Link, message: bytes) -> None:
        sent.append(message)
        send(link, message)

    def recording_read(sock: object) -> tuple[int, int, bytes]:
        kind, request, payload = read(sock)  # type: ignore[arg-type]
        received.append(REPLY_HEADER.size + len(payload))
        return kind, request, payload

    monkeypatch.setattr(remote_inference._Link, "send", recording_send)
    monkeypatch.setattr(remote_inference, "_read_reply", recording_read)
    socket_path = _socket_of(inference_pid(two_frontends.pid))
    crop = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), np.uint8)
    crops = np.repeat(crop, 8, axis=0)
    client = RemoteInference(socket_path)
    try:
        assert client.start(timeout=30)

        async def run() -> dict[str, np.ndarray]:
            deadline = time.monotonic() + 30
            outputs = await client.pose.submit(crops, deadline)
            with pytest.raises(DeadlineExceeded):  # too late: refused, nothing hangs
                await client.pose.submit(crops[:1], time.monotonic() + 0.0005)
            return outputs

        outputs = asyncio.run(run())
    finally:
        client.stop()
    assert outputs["keypoints"].shape == (8, 17, 2)
    np.testing.assert_allclose(outputs["keypoints"][0], outputs["keypoints"][7], atol=1e-4)
    assert sent and all(len(message) == CONTROL.size == 26 for message in sent)
    greeting, *replies = received
    assert greeting < 4096  # the models' descriptions and the slabs' names
    assert replies and max(replies) < 8 * 1024 < CROP_BYTES, replies
    assert all(not message.startswith(b"\x80") for message in sent)  # no pickle protocol header


def _socket_of(pid: int) -> Path:
    """The Unix socket the inference process listens on (its --socket argument)."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return Path(arguments[arguments.index(b"--socket") + 1].decode())


def test_killing_the_inference_process_gives_503_at_once_then_it_comes_back(
    two_frontends: ServiceProcess,
) -> None:
    url = two_frontends.url
    segments_before = shared_segments()
    photo = (PHOTOS / "astronaut.jpg").read_bytes()
    victim = inference_pid(two_frontends.pid)

    def post() -> tuple[int, float]:
        started = time.monotonic()
        answer = httpx.post(
            f"{url}/pose", files={"image": ("a.jpg", photo, "image/jpeg")}, timeout=60
        )
        return answer.status_code, time.monotonic() - started

    with ThreadPoolExecutor(8) as pool:
        in_flight = [pool.submit(post) for _ in range(8)]
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        answers = [future.result(timeout=30) for future in in_flight]
    # Every request accepted is answered: done before the kill, or 503, none left hanging.
    assert {status for status, _ in answers} <= {200, 503}, answers
    assert time.monotonic() - killed < 10
    ready = httpx.get(f"{url}/health/ready")
    assert ready.status_code == 503, ready.text
    assert "inference process" in ready.json()["reason"]
    refused = httpx.post(f"{url}/pose", files={"image": ("a.jpg", photo, "image/jpeg")})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
    assert "inference process" in refused.json()["error"]["message"]
    assert shared_segments() <= segments_before  # the killed process's slabs had no name left
    # `dipr serve` starts it again, and the front-ends reconnect.
    deadline = time.monotonic() + 90
    while httpx.get(f"{url}/health/ready").status_code != 200:
        assert time.monotonic() < deadline, two_frontends.log_tail()
        time.sleep(0.3)
    assert inference_pid(two_frontends.pid) != victim
    answer = httpx.post(f"{url}/pose", files={"image": ("a.jpg", photo, "image/jpeg")})
    assert answer.status_code == 200


def test_slot_runs_are_contiguous_first_fit_and_given_back() -> None:
    runs = SlotRuns(8)
    assert runs.take(3) == 0 and runs.take(3) == 3
    assert runs.take(3) is None  # 2 free slots left
    runs.give_back(0, 3)
    assert runs.take(2) == 0 and runs.take(2) == 6 and runs.free == 1
    assert runs.take(0) is None and runs.take(9) is None


def test_results_and_errors_cross_as_json_and_raw_bytes_never_objects() -> None:
    outputs = {
        "keypoints": np.arange(2 * 17 * 2, dtype=np.float32).reshape(2, 17, 2),
        "scores": np.ones((2, 17), np.float32),
    }
    decoded = decode_arrays(encode_arrays(outputs))
    assert list(decoded) == list(outputs)
    for name, values in outputs.items():
        np.testing.assert_array_equal(decoded[name], values)
        assert decoded[name].flags.writeable
    with pytest.raises(ValueError, match="refused dtype"):
        decode_arrays(encode_arrays({"bad": np.array([None], dtype=object)}))
    refusal = decode_error(encode_error(Overloaded("the pose queue is full", cause="pose_queue")))
    assert isinstance(refusal, Overloaded) and refusal.cause == "pose_queue"
    assert isinstance(decode_error(encode_error(RuntimeError("CUDA"))), InferenceFailed)
