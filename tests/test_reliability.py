"""Faults, overload, slow clients, shutdown and access control, over real HTTP on loopback."""

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from dipr.benchmarks.servers import free_port
from dipr.core import detector_contract, pose_contract
from dipr.core.keypoints import COCO_KEYPOINTS, COCO_SKELETON
from tests.helpers.paths import PHOTOS
from tests.helpers.service_process import service_process
from tests.helpers.serving import running_service

POISON = 200  # images whose brightest pixel is ≥ 17 make the faulty model raise


def png_of(value: int, size: int = 32) -> bytes:
    return cv2.imencode(".png", np.full((size, size, 3), value, np.uint8))[1].tobytes()


def small_photo() -> bytes:
    image = cv2.resize(cv2.imread(str(PHOTOS / "astronaut.jpg")), (96, 96))
    return cv2.imencode(".png", image)[1].tobytes()


def faulty_model(path: Path, table: int = len(COCO_KEYPOINTS)) -> Path:
    """A contract-following model whose inference raises for bright images: it looks the
    brightest pixel up in a `table`-entry table (17: images whose brightest pixel is ≥ 17 raise;
    0: every image, the warm-up's black ones too), and onnxruntime fails on an index out of
    range."""
    k = len(COCO_KEYPOINTS)
    nodes = [
        helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"]),  # [N]; raises if ≥ k
        helper.make_node("Reshape", ["looked_up", "column"], ["per_image"]),  # [N, 1]
        helper.make_node("Mul", ["per_image", "zeros_k"], ["scores_zero"]),  # [N, K]
        helper.make_node("Add", ["scores_zero", "half_k"], [pose_contract.SCORES]),
        helper.make_node("Reshape", ["per_image", "column3"], ["per_image3"]),  # [N, 1, 1]
        helper.make_node("Mul", ["per_image3", "points"], [pose_contract.KEYPOINTS]),  # [N, K, 2]
        helper.make_node("Identity", [pose_contract.KEYPOINTS], [pose_contract.KEYPOINTS_RAW]),
    ]
    inits = [
        helper.make_tensor("table", TensorProto.FLOAT, [table], [1.0] * table),
        helper.make_tensor("column", TensorProto.INT64, [2], [-1, 1]),
        helper.make_tensor("column3", TensorProto.INT64, [3], [-1, 1, 1]),
        helper.make_tensor("zeros_k", TensorProto.FLOAT, [1, k], [0.0] * k),
        helper.make_tensor("half_k", TensorProto.FLOAT, [1, k], [0.5] * k),
        helper.make_tensor("points", TensorProto.FLOAT, [1, k, 2], [8.0] * (2 * k)),
    ]
    graph = helper.make_graph(
        nodes,
        "faulty",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 32, 32, 3])],
        [
            helper.make_tensor_value_info(pose_contract.KEYPOINTS, TensorProto.FLOAT, ["N", k, 2]),
            helper.make_tensor_value_info(pose_contract.SCORES, TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info(
                pose_contract.KEYPOINTS_RAW, TensorProto.FLOAT, ["N", k, 2]
            ),
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=10,  # what onnxruntime 1.31 reads (the onnx package writes newer)
    )
    model.ir_version = 8
    for key, value in {
        pose_contract.NAME: "faulty",
        pose_contract.VERSION: "0",
        pose_contract.INPUT_SIZE: "[32, 32]",
        pose_contract.KEYPOINT_NAMES: json.dumps(list(COCO_KEYPOINTS)),
        pose_contract.SKELETON: json.dumps([list(limb) for limb in COCO_SKELETON]),
        pose_contract.DEBIAS: "false",
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def faulty_detector(path: Path) -> Path:
    """A detector following its contract that raises for bright images as `faulty_model` does,
    and finds 6 persons (score 0.5, the same box) in any other."""
    persons, k = 6, len(COCO_KEYPOINTS)
    outputs = {
        detector_contract.BOXES: ([persons, 4], [4.0, 4.0, 28.0, 28.0] * persons),
        detector_contract.BOX_SCORES: ([persons], [0.5] * persons),
        detector_contract.KEYPOINTS: ([persons, k, 2], [16.0] * (persons * k * 2)),
        detector_contract.KEYPOINT_SCORES: ([persons, k], [0.5] * (persons * k)),
    }
    nodes = [
        helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0, axes=[1, 2, 3]),
        helper.make_node("Cast", ["peak"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"]),  # [N]; raises if ≥ 17
    ]
    inits = [helper.make_tensor("table", TensorProto.FLOAT, [k], [1.0] * k)]
    for name, (shape, values) in outputs.items():
        # [N, 1, …] × the constant [1, …]: one copy of it per image.
        nodes += [
            helper.make_node("Reshape", ["looked_up", f"{name}_column"], [f"{name}_per_image"]),
            helper.make_node("Mul", [f"{name}_per_image", f"{name}_value"], [name]),
        ]
        column = [-1] + [1] * len(shape)
        inits += [
            helper.make_tensor(f"{name}_column", TensorProto.INT64, [len(column)], column),
            helper.make_tensor(f"{name}_value", TensorProto.FLOAT, [1, *shape], values),
        ]
    graph = helper.make_graph(
        nodes,
        "faulty-detector",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", 32, 32, 3])],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *shape])
            for name, (shape, _) in outputs.items()
        ],
        inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=10,  # what onnxruntime 1.31 reads (the onnx package writes newer)
    )
    model.ir_version = 8
    for key, value in {
        detector_contract.ROLE: detector_contract.ROLE_PERSON_DETECTOR,
        detector_contract.NAME: "faulty-detector",
        detector_contract.VERSION: "0",
        detector_contract.INPUT_SIZE: "[32, 32]",
        detector_contract.MAX_PERSONS: str(persons),
        detector_contract.KEYPOINT_NAMES: json.dumps(list(COCO_KEYPOINTS)),
        detector_contract.LETTERBOX: detector_contract.LETTERBOX_CENTRED,
    }.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def pose(url: str, image: bytes, **kwargs: object) -> httpx.Response:
    return httpx.post(
        f"{url}/pose", files=[("image", ("x.png", image, "image/png"))], timeout=30, **kwargs
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("failing", ["pose model", "detector"])
def test_a_failing_batch_fails_only_its_requests_then_readiness_reports_it(
    tmp_path: Path, failing: str
) -> None:
    if failing == "pose model":  # images without boxes as whole-image crops: no detector
        settings: dict[str, object] = {"model_path": faulty_model(tmp_path / "faulty.onnx")}
        settings["detect"] = False
    else:
        settings = {"detector_path": faulty_detector(tmp_path / "faulty-detector.onnx")}
    with running_service(failure_threshold=3, max_batch_size=8, **settings) as url:
        assert pose(url, png_of(5)).status_code == 200
        failed = pose(url, png_of(POISON))
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "inference_failed"
        assert "Gather" in failed.json()["error"]["message"]  # onnxruntime's own reason
        assert pose(url, png_of(5)).status_code == 200  # the batcher keeps serving
        assert httpx.get(f"{url}/health/ready").status_code == 200

        async def mixed() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            f"{url}/pose",
                            files=[
                                (
                                    "image",
                                    ("x.png", png_of(POISON if i % 4 == 0 else 5), "image/png"),
                                )
                            ],
                        )
                        for i in range(16)
                    )
                )

        statuses = [r.status_code for r in asyncio.run(mixed())]
        assert set(statuses) <= {200, 500} and statuses.count(500) >= 4
        for _ in range(3):  # failures that persist take the service out of rotation
            assert pose(url, png_of(POISON)).status_code == 500
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503 and "inference batches failed" in ready.json()["reason"]
        metrics = httpx.get(f"{url}/metrics").text
        assert 'dipr_rejected_total{reason="inference_failed"}' in metrics
        # Out of rotation, but still serving: a good batch ends the streak and readiness returns.
        assert pose(url, png_of(5)).status_code == 200
        assert httpx.get(f"{url}/health/ready").status_code == 200


def measure_capacity(url: str, image: bytes, seconds: float = 2.0) -> float:
    """Requests per second with a few clients in a closed loop."""
    done = 0
    stop = time.monotonic() + seconds

    def client() -> None:
        nonlocal done
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                assert (
                    http.post(
                        f"{url}/pose", files=[("image", ("x.png", image, "image/png"))]
                    ).status_code
                    == 200
                )
                done += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done / seconds


def test_a_burst_of_ten_times_capacity_gets_200_or_503_and_nothing_is_lost() -> None:
    image = small_photo()
    timeout = 10.0
    with running_service(
        max_queue=16, max_boxes=16, max_images=16, request_timeout_s=timeout
    ) as url:
        capacity = measure_capacity(url, image)
        burst = max(50, min(400, int(10 * capacity)))

        async def flood() -> list[tuple[int, float, str | None]]:
            limits = httpx.Limits(max_connections=burst)
            async with httpx.AsyncClient(timeout=timeout + 5, limits=limits) as client:

                async def one() -> tuple[int, float, str | None]:
                    started = time.monotonic()
                    r = await client.post(
                        f"{url}/pose", files=[("image", ("x.png", image, "image/png"))]
                    )
                    return r.status_code, time.monotonic() - started, r.headers.get("retry-after")

                return await asyncio.gather(*(one() for _ in range(burst)))

        before = httpx.get(f"{url}/metrics").text
        answers = asyncio.run(flood())
        after = httpx.get(f"{url}/metrics").text
    statuses = [status for status, _, _ in answers]
    assert len(answers) == burst  # every request got an answer
    assert set(statuses) <= {200, 503}, set(statuses)
    assert statuses.count(503) > 0 and statuses.count(200) > 0
    assert all(
        retry is not None and int(retry) >= 1 for status, _, retry in answers if status == 503
    )
    assert max(elapsed for _, elapsed, _ in answers) < timeout + 2  # none hung

    def rejected(text: str) -> float:
        line = [
            x for x in text.splitlines() if x.startswith('dipr_rejected_total{reason="overloaded"}')
        ]
        return float(line[0].split()[-1]) if line else 0.0

    assert rejected(after) - rejected(before) == statuses.count(503)
    print(
        f"capacity {capacity:.1f} req/s, burst {burst}: {statuses.count(200)} × 200, "
        f"{statuses.count(503)} × 503"
    )


def test_a_slow_client_does_not_block_others() -> None:
    with running_service() as url:
        port = int(url.rsplit(":", 1)[1])
        image = small_photo()
        body_head = (
            b'--b\r\nContent-Disposition: form-data; name="image"; filename="x.png"'
            b"\r\nContent-Type: image/png\r\n\r\n"
        )
        body = body_head + image + b"\r\n--b--\r\n"
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            b"POST /pose HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        chunks = [
            body[i : i + len(body) // 20 + 1] for i in range(0, len(body), len(body) // 20 + 1)
        ]
        latencies = []
        for chunk in chunks:  # the body trickles in over ~3 s
            slow.sendall(chunk)
            started = time.monotonic()
            assert pose(url, image).status_code == 200
            latencies.append(time.monotonic() - started)
            time.sleep(0.15)
        answer = slow.recv(65536)
        slow.close()
        assert answer.startswith(b"HTTP/1.1 200")
        assert max(latencies) < 1.0, latencies


@pytest.mark.parametrize(
    "processes",
    [(), ("--workers", "2")],
    ids=["one process", "uvicorn's supervisor"],
)
def test_sigterm_drains_finishes_accepted_requests_and_exits(
    tmp_path: Path, processes: tuple[str, ...]
) -> None:
    grace = 10.0
    log_path = tmp_path / "server.log"
    with service_process(
        log_path,
        ("--log-level", "info", *processes),
        drain_delay_s=1.0,
        shutdown_grace_s=grace,
        log_format="json",
    ) as service:
        # Every worker ready (one answered when the first was): 10 answers in a row, each on a
        # new connection, which the kernel gives to either worker.
        in_a_row, deadline = 0, time.monotonic() + 60
        while in_a_row < 10 and time.monotonic() < deadline:
            ok = httpx.get(f"{service.url}/health/ready", timeout=5).status_code == 200
            in_a_row = in_a_row + 1 if ok else 0
            time.sleep(0.05 if ok else 0.5)
        image = small_photo()
        outcomes: list[str] = []
        sigterm_at: list[float] = []

        def client() -> None:
            # No keep-alive: each request is its own connection, as a load balancer's would be.
            with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
                for _ in range(400):
                    try:
                        r = c.post(
                            f"{service.url}/pose", files=[("image", ("x.png", image, "image/png"))]
                        )
                    except httpx.ConnectError:
                        outcomes.append("refused")  # never accepted: the listener is closed
                        return
                    except httpx.TransportError as error:
                        outcomes.append(f"dropped: {error!r}")
                        return
                    outcomes.append(str(r.status_code))
                    if r.status_code == 503:  # draining: a balancer would go elsewhere now
                        return

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        sigterm_at.append(time.monotonic())
        service.server.send_signal(signal.SIGTERM)
        # At once in one process; uvicorn's supervisor looks at its signals every 0.5 s before
        # it passes SIGTERM on to its workers.
        soon = sigterm_at[0] + (0.5 if not processes else 1.0)
        while (ready := httpx.get(f"{service.url}/health/ready", timeout=5)).status_code == 200:
            assert time.monotonic() < soon, "readiness still 200"
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
        for t in threads:
            t.join(60)
        code = service.server.wait(grace + 5)
        exited_after = time.monotonic() - sigterm_at[0]
    # uvicorn re-raises the captured SIGTERM once its shutdown is complete.
    assert code in (0, -signal.SIGTERM)
    assert exited_after < 1.0 + grace
    assert not [o for o in outcomes if o.startswith("dropped")], outcomes
    assert set(outcomes) <= {"200", "503", "refused"}
    assert outcomes.count("200") > 4
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(line["message"].startswith("draining") for line in lines)
    assert any(line["message"] == "Application shutdown complete." for line in lines)
    assert all("request_id" in line for line in lines if line["logger"] == "dipr.access")


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    secrets = tmp_path_factory.mktemp("secrets") / "keys"
    secrets.write_text("from-file-key\n\n")
    with running_service(api_keys="env-key-1,env-key-2", api_keys_file=secrets) as url:
        yield url


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"X-API-Key": "env-key-1x"},
        {"X-API-Key": ""},
        {"Authorization": "Basic ZW52LWtleS0xOg=="},
    ],
)
def test_missing_or_wrong_api_key_is_401(keyed_url: str, headers: dict[str, str]) -> None:
    for response in (
        pose(keyed_url, small_photo(), headers=headers),
        httpx.get(f"{keyed_url}/v1/model", headers=headers),
        httpx.get(f"{keyed_url}/metrics", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer env-key-2"},
        {"X-API-Key": "env-key-1"},
        {"Authorization": "Bearer from-file-key"},
    ],
)
def test_a_right_api_key_is_let_in_and_health_stays_open(
    keyed_url: str, headers: dict[str, str]
) -> None:
    assert pose(keyed_url, small_photo(), headers=headers).status_code == 200
    assert httpx.get(f"{keyed_url}/v1/model", headers=headers).status_code == 200
    assert httpx.get(f"{keyed_url}/health/ready").status_code == 200
    assert httpx.get(f"{keyed_url}/health/live").status_code == 200


def test_api_keys_are_never_logged(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    with service_process(log_path, ("--log-level", "debug"), api_keys="very-secret-key") as service:
        right, wrong = {"X-API-Key": "very-secret-key"}, {"X-API-Key": "very-secret-kez"}
        assert pose(service.url, small_photo(), headers=right).status_code == 200
        assert pose(service.url, small_photo(), headers=wrong).status_code == 401
    logs = log_path.read_text()
    assert "dipr.access" in logs
    assert "very-secret" not in logs


def test_metrics_can_live_on_their_own_port() -> None:
    metrics_port = free_port()
    with running_service(metrics_port=metrics_port, api_keys="k") as url:
        assert httpx.get(f"{url}/metrics", headers={"X-API-Key": "k"}).status_code == 404
        own = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")  # open: no key needed
        assert own.status_code == 200 and "dipr_model_info" in own.text


def test_cors_is_off_by_default_and_on_when_configured() -> None:
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "POST"}
    with running_service() as url:
        answer = httpx.options(f"{url}/pose", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
    with running_service(cors_origins="https://example.org") as url:
        answer = httpx.options(f"{url}/pose", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://example.org"


def test_request_ids_are_echoed_or_made() -> None:
    with running_service() as url:
        given = httpx.get(f"{url}/health/live", headers={"X-Request-ID": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42"
        made = httpx.get(f"{url}/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
        assert made.headers["x-request-id"] != "bad id\twith spaces"
        assert len(made.headers["x-request-id"]) == 32


def test_a_model_that_fails_at_warm_up_leaves_the_service_up_and_unready(tmp_path: Path) -> None:
    """An ONNX Runtime error at warm-up (on a GPU: out of memory, cuDNN missing at the first Conv)
    must not crash-loop the process: it stays alive, unready, with the reason."""
    with running_service(
        model_path=faulty_model(tmp_path / "fails.onnx", table=0), detect=False
    ) as url:
        assert httpx.get(f"{url}/health/live").status_code == 200
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"].startswith("warm-up failed: "), ready.json()
        refused = httpx.post(
            f"{url}/pose", content=png_of(0), headers={"content-type": "image/png"}
        )
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
