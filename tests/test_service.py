"""The /pose service over real HTTP on loopback, with the real default ONNX model."""

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.helpers.image_files import side_by_side
from tests.helpers.paths import PHOTOS
from tests.helpers.service_process import service_process
from tests.helpers.serving import running_service

ASTRONAUT_BOX = [40.0, 20.0, 470.0, 512.0]  # the astronaut, in astronaut.jpg


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_service(
        max_request_bytes=4_000_000, max_image_pixels=8_000_000, max_images=4, max_boxes=8
    ) as base:
        yield base


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def photo(name: str = "astronaut") -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(PHOTOS / f"{name}.jpg")), cv2.COLOR_BGR2RGB)


def post(
    url: str,
    files: list[tuple[str, bytes]],
    boxes: object = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    data = {} if boxes is None else {"boxes": json.dumps(boxes)}
    return httpx.post(
        f"{url}/pose",
        params=params,
        data=data,
        timeout=60,
        files=[("image", (name, content, "image/png")) for name, content in files],
    )


def keypoints(person: dict) -> np.ndarray:
    return np.array([[k["x"], k["y"]] for k in person["keypoints"]])


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_a_photo_gives_17_keypoints_inside_the_person(url: str) -> None:
    response = post(url, [("a.png", png(photo()))], boxes=[[ASTRONAUT_BOX]], params={"raw": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {
        "name": "movenet-thunder",
        "version": "1",
        "input_size": [256, 256],
        "debias": True,
    }
    (result,) = body["results"]
    assert result["image"] == {"width": 512, "height": 512}
    (person,) = result["persons"]
    assert person["box"] == ASTRONAUT_BOX
    assert [k["name"] for k in person["keypoints"]][:3] == ["nose", "left_eye", "right_eye"]
    assert len(person["keypoints"]) == 17
    x1, y1, x2, y2 = ASTRONAUT_BOX
    confident = [k for k in person["keypoints"] if k["score"] > 0.3]
    assert len(confident) >= 7  # face and shoulders at least
    for k in confident:
        assert x1 <= k["x"] <= x2 and y1 <= k["y"] <= y2, k
        assert {"x_raw", "y_raw"} <= k.keys()
    nose = person["keypoints"][0]
    assert 180 < nose["x"] < 270 and 90 < nose["y"] < 160  # the face is up and in the middle


def test_a_pasted_photo_gives_the_same_keypoints_shifted(url: str) -> None:
    image = photo()
    dx, dy = 137, 61
    # Black, like the zero border a crop gets where the padded box leaves the photo.
    canvas = np.zeros((800, 900, 3), np.uint8)
    canvas[dy : dy + 512, dx : dx + 512] = image
    shifted_box = [
        ASTRONAUT_BOX[0] + dx,
        ASTRONAUT_BOX[1] + dy,
        ASTRONAUT_BOX[2] + dx,
        ASTRONAUT_BOX[3] + dy,
    ]
    response = post(
        url, [("a.png", png(image)), ("c.png", png(canvas))], boxes=[[ASTRONAUT_BOX], [shifted_box]]
    )
    assert response.status_code == 200, response.text
    original, pasted = (r["persons"][0] for r in response.json()["results"])
    np.testing.assert_allclose(
        keypoints(pasted), keypoints(original) + np.array([dx, dy]), atol=1.0
    )


def test_images_and_boxes_keep_their_order(url: str) -> None:
    astronaut, hopper = png(photo()), png(photo("grace_hopper"))
    boxes = [[[0, 0, 512, 512], ASTRONAUT_BOX], [], [[100, 50, 400, 500]]]
    response = post(url, [("a.png", astronaut), ("h.png", hopper), ("h2.png", hopper)], boxes=boxes)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image"] for r in results] == [
        {"width": 512, "height": 512},
        {"width": 512, "height": 600},
        {"width": 512, "height": 600},
    ]
    assert [len(r["persons"]) for r in results] == [2, 1, 1]
    assert results[0]["persons"][1]["box"] == ASTRONAUT_BOX
    # No boxes: the person the detector finds, with its score, inside the image.
    (found,) = results[1]["persons"]
    assert 0.1 <= found["box_score"] <= 1 and "box_score" not in results[0]["persons"][0]
    x1, y1, x2, y2 = found["box"]
    assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 600 and (x2 - x1) * (y2 - y1) > 512 * 600 / 4
    # Each person's answer is the one a request of its own gets.
    alone = post(url, [("h.png", hopper)], boxes=[[[100, 50, 400, 500]]]).json()
    np.testing.assert_allclose(
        keypoints(results[2]["persons"][0]), keypoints(alone["results"][0]["persons"][0]), atol=0.01
    )


def metric_value(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    values = [float(v) for v in re.findall(pattern, text, re.MULTILINE)]
    return sum(values)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(url: str) -> None:
    images = [photo("astronaut"), photo("grace_hopper"), photo("camera")]
    expected = [
        keypoints(post(url, [("x.png", png(im))]).json()["results"][0]["persons"][0])
        for im in images
    ]
    before = httpx.get(f"{url}/metrics").text

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{url}/pose", files=[("image", ("x.png", png(images[i % 3]), "image/png"))]
                    )
                    for i in range(24)
                )
            )

    responses = asyncio.run(flood())
    after = httpx.get(f"{url}/metrics").text
    for i, response in enumerate(responses):
        assert response.status_code == 200
        got = keypoints(response.json()["results"][0]["persons"][0])
        np.testing.assert_allclose(got, expected[i % 3], atol=0.01)
    for model in ("pose", "detector"):  # 24 images, one person each: 24 of either input
        labels = f'{{model="{model}"}}'
        single = metric_value(
            after, "dipr_batch_size_bucket", f'{{model="{model}",le="1.0"}}'
        ) - metric_value(before, "dipr_batch_size_bucket", f'{{model="{model}",le="1.0"}}')
        batches = metric_value(after, "dipr_batch_size_count", labels) - metric_value(
            before, "dipr_batch_size_count", labels
        )
        inputs = metric_value(after, "dipr_batch_size_sum", labels) - metric_value(
            before, "dipr_batch_size_sum", labels
        )
        assert inputs == 24, model
        assert batches < 24 and single < batches, model  # some batches held more than one
    images_delta = metric_value(after, "dipr_images_total") - metric_value(
        before, "dipr_images_total"
    )
    assert images_delta == 24


@pytest.mark.parametrize("content_type", ["image/jpeg", "image/jpg"])
def test_raw_body_upload(url: str, content_type: str) -> None:
    data = (PHOTOS / "grace_hopper.jpg").read_bytes()
    response = httpx.post(f"{url}/pose", content=data, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["image"] == {"width": 512, "height": 600}
    assert "x_raw" not in response.json()["results"][0]["persons"][0]["keypoints"][0]


def test_render_returns_a_jpeg_of_the_image(url: str) -> None:
    response = httpx.post(
        f"{url}/pose/render",
        timeout=60,
        files=[("image", ("a.jpg", (PHOTOS / "astronaut.jpg").read_bytes(), "image/jpeg"))],
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    drawn = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (512, 512, 3)
    original = cv2.imread(str(PHOTOS / "astronaut.jpg"))
    assert np.abs(drawn.astype(int) - original).max() > 100  # something was drawn


def bomb_png(width: int, height: int) -> bytes:
    """A valid small PNG whose header then claims another size (decompression bomb)."""
    data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        (
            {"content": b"\x00garbage" * 10, "headers": {"content-type": "image/jpeg"}},
            400,
            "undecodable_image",
        ),
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "undecodable_image"),
        (
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": b"GIF89a" + b"\x00" * 20, "headers": {"content-type": "image/png"}},
            415,
            "unsupported_media_type",
        ),
        (
            {"content": bomb_png(100_000, 100_000), "headers": {"content-type": "image/png"}},
            413,
            "payload_too_large",
        ),
        (
            {"content": b"\x00" * 4_000_001, "headers": {"content-type": "image/png"}},
            413,
            "payload_too_large",
        ),
        ({"files": [("image", ("a.png", b"x", "image/png"))] * 5}, 413, "payload_too_large"),
        ({"files": [("other", ("a.png", b"x", "image/png"))]}, 422, "invalid_request"),
        (
            {"data": {"image": "text"}, "files": [("x", ("a.png", b"x", "image/png"))]},
            422,
            "invalid_request",
        ),
        ({"data": {"image": "text"}}, 415, "unsupported_media_type"),  # urlencoded form
    ],
)
def test_bad_input_gets_its_status_and_json(
    url: str, request_kwargs: dict, status: int, code: str
) -> None:
    assert_error(httpx.post(f"{url}/pose", timeout=30, **request_kwargs), status, code)


@pytest.mark.parametrize(
    "boxes",
    [
        "not json",
        '{"a": 1}',
        "[[[1, 2, 3]]]",
        '[[["1", 2, 3, 4]]]',
        "[[[NaN, 0, 10, 10]]]",
        "[[[0, 0, Infinity, 10]]]",
        "[[[10, 10, 5, 20]]]",
        "[[[600, 600, 700, 700]]]",
        "[[[0, 0, 10, 10]], [[0, 0, 10, 10]]]",
        "[[0, 0, 10, 10]]",
        "[[[true, 0, 10, 10]]]",
    ],
)
def test_bad_boxes_are_422(url: str, boxes: str) -> None:
    response = httpx.post(
        f"{url}/pose",
        data={"boxes": boxes},
        timeout=30,
        files=[("image", ("a.png", png(photo()), "image/png"))],
    )
    assert_error(response, 422, "invalid_request")


def test_too_many_boxes_is_413(url: str) -> None:
    assert_error(
        post(url, [("a.png", png(photo()))], boxes=[[[0, 0, 10, 10]] * 9]), 413, "payload_too_large"
    )


def test_bad_parameter_is_422_and_unknown_route_is_json_404(url: str) -> None:
    assert_error(
        post(url, [("a.png", png(photo()))], params={"raw": "perhaps"}), 422, "invalid_request"
    )
    assert_error(httpx.get(f"{url}/nope"), 404, "not_found")
    assert_error(httpx.get(f"{url}/pose"), 405, "method_not_allowed")


def test_the_service_keeps_answering_after_errors(url: str) -> None:
    for _ in range(3):
        httpx.post(f"{url}/pose", content=b"junk", headers={"content-type": "image/jpeg"})
    assert post(url, [("a.png", png(photo()))]).status_code == 200
    assert httpx.get(f"{url}/health/ready").json() == {"status": "ready"}


def test_model_endpoint_reports_metadata_and_provider(url: str) -> None:
    body = httpx.get(f"{url}/v1/model").json()
    assert body["provider"] == "CPUExecutionProvider"
    assert body["input_size"] == [256, 256]
    assert len(body["keypoint_names"]) == 17 and len(body["skeleton"]) == 19
    assert body["metadata"]["region"] in ("global", "window", "person")
    detector = body["detector"]
    assert (detector["name"], detector["max_persons"]) == ("movenet-multipose", 6)
    assert detector["input_size"] == [256, 256]
    assert detector["metadata"]["role"] == "person_detector"


def three_persons() -> bytes:
    return side_by_side("astronaut.jpg", "camera.jpg", "grace_hopper.jpg")


def test_a_photo_of_several_people_without_boxes_gives_each_of_them(url: str) -> None:
    response = httpx.post(
        f"{url}/pose", content=three_persons(), headers={"content-type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    persons = result["persons"]
    assert len(persons) == 3
    scores = [person["box_score"] for person in persons]
    assert scores == sorted(scores, reverse=True)
    assert all(len(person["keypoints"]) == 17 for person in persons)


@pytest.mark.parametrize(
    ("params", "expected"),
    [({"detect": "false"}, 1), ({"min_score": "0.99"}, 0), ({"min_score": "0"}, 6)],
)
def test_detection_per_request(url: str, params: dict[str, str], expected: int) -> None:
    response = httpx.post(
        f"{url}/pose",
        params=params,
        content=three_persons(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["persons"]) == expected


@pytest.mark.parametrize("params", [{"min_score": "1.5"}, {"min_score": "x"}, {"detect": "x"}])
def test_bad_detection_parameters_are_422(url: str, params: dict[str, str]) -> None:
    headers = {"content-type": "image/jpeg"}
    response = httpx.post(f"{url}/pose", params=params, content=three_persons(), headers=headers)
    assert_error(response, 422, "invalid_request")
    assert next(iter(params)) in response.json()["error"]["message"]


def test_render_draws_every_person_found(url: str) -> None:
    image = three_persons()
    drawn = httpx.post(
        f"{url}/pose/render", content=image, headers={"content-type": "image/jpeg"}, timeout=60
    )
    assert drawn.status_code == 200 and drawn.headers["content-type"] == "image/jpeg"
    original = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    rendered = cv2.imdecode(np.frombuffer(drawn.content, np.uint8), cv2.IMREAD_COLOR)
    changed = np.abs(rendered.astype(int) - original.astype(int)).max(axis=2) > 60
    # Drawings in each third of the picture: one skeleton per person.
    thirds = [changed[:, i * 1370 // 3 : (i + 1) * 1370 // 3].mean() for i in range(3)]
    assert min(thirds) > 0.002, thirds


def test_metrics_pass_promtool_and_count(url: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool missing in CI: make test installs Debian's prometheus")
        pytest.skip("promtool missing: install Debian's prometheus package")
    before = httpx.get(f"{url}/metrics").text
    post(url, [("a.png", png(photo()))], boxes=[[ASTRONAUT_BOX, ASTRONAUT_BOX]])
    httpx.post(f"{url}/pose", content=b"junk", headers={"content-type": "image/jpeg"})
    after = httpx.get(f"{url}/metrics").text
    check = subprocess.run(
        [promtool, "check", "metrics"], input=after, text=True, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    for name in (
        "dipr_http_requests_total",
        "dipr_request_duration_seconds_bucket",
        "dipr_queue_wait_seconds_bucket",
        "dipr_inference_duration_seconds_bucket",
        "dipr_batch_size_bucket",
        "dipr_queue_depth",
        "dipr_persons_total",
        "dipr_images_total",
        "dipr_rejected_total",
        "dipr_model_info",
        "dipr_stage_duration_seconds_bucket",
        "dipr_persons_per_image_bucket",
        "dipr_decode_budget_megapixels",
        "dipr_decode_in_flight_megapixels",
        "dipr_client_connections",
        "dipr_stalled_connections_closed_total",
    ):
        assert re.search(rf"^{name}\b", after, re.MULTILINE), name
    for stage in ("admit", "decode", "crop", "pose", "to_image"):
        assert f'dipr_stage_duration_seconds_count{{stage="{stage}"}}' in after, stage
    for role, name in (("pose", "movenet-thunder"), ("detector", "movenet-multipose")):
        labels = f'name="{name}",provider="CPUExecutionProvider",role="{role}",version="1"'
        assert f"dipr_model_info{{{labels}}} 1.0" in after, role

    def delta(name: str, labels: str = "") -> float:
        return metric_value(after, name, labels) - metric_value(before, name, labels)

    assert delta("dipr_persons_total") == 2
    assert delta("dipr_images_total") == 1
    assert delta("dipr_rejected_total", '{reason="undecodable_image"}') == 1
    assert delta("dipr_http_requests_total", '{method="POST",route="/pose",status="200"}') == 1


def test_full_queue_answers_503_with_retry_after() -> None:
    with running_service(
        max_queue=4, max_boxes=4, max_images=4, max_batch_size=1, detect=False
    ) as url:
        image = png(photo())
        boxes = json.dumps([[ASTRONAUT_BOX] * 4])

        async def flood() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            f"{url}/pose",
                            data={"boxes": boxes},
                            files=[("image", ("a.png", image, "image/png"))],
                        )
                        for _ in range(12)
                    )
                )

        responses = asyncio.run(flood())
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 503}, statuses
        for response in responses:
            if response.status_code == 503:
                assert_error(response, 503, "overloaded")
                assert int(response.headers["retry-after"]) >= 1
        metrics = httpx.get(f"{url}/metrics").text
        assert metric_value(
            metrics, "dipr_rejected_total", '{reason="overloaded"}'
        ) == statuses.count(503)
        assert metric_value(
            metrics, "dipr_overloaded_total", '{cause="pose_queue"}'
        ) == statuses.count(503)


def test_passed_deadline_is_504() -> None:
    with running_service(request_timeout_s=0.001) as url:
        assert_error(post(url, [("a.png", png(photo()))]), 504, "deadline_exceeded")
        assert httpx.get(f"{url}/health/ready").status_code == 200


@pytest.mark.parametrize(("provider", "named"), [("cuda", "CUDA"), ("tensorrt", "TensorRT")])
def test_missing_gpu_is_never_a_silent_cpu_fallback(provider: str, named: str, tmp_path) -> None:
    with running_service(provider=provider, tensorrt_cache_dir=tmp_path) as url:
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503
        assert f"{named} was requested" in ready.json()["reason"]
        assert_error(post(url, [("a.png", png(photo()))]), 503, "not_ready")


def test_the_serving_path_never_imports_torch() -> None:
    code = (
        "import sys; import dipr.cli, dipr.service.http.app; "
        "from dipr.service.http.app import create_app; create_app(); "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_metrics_add_up_across_worker_processes(tmp_path: Path) -> None:
    """`dipr serve --workers 2`: /metrics (served by either worker) counts both workers' work."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with service_process(
        tmp_path / "server.log",
        ("--workers", "2", "--log-level", "warning"),
        environment={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        intra_op_threads=1,
        max_batch_size=2,
    ) as service:
        image = png(cv2.resize(photo(), (128, 128)))
        for _ in range(12):  # separate connections: the kernel spreads them over the workers
            assert post(service.url, [("a.png", image)]).status_code == 200
        text = httpx.get(f"{service.url}/metrics").text
    assert metric_value(text, "dipr_images_total") == 12
    pids = {p.name.rsplit("_", 1)[-1] for p in metrics_dir.glob("*.db")}
    assert len(pids) >= 2  # both workers wrote their own files


def test_a_streamed_body_over_the_limit_is_413(url: str) -> None:
    """Without Content-Length (chunked upload) the limit is enforced while reading."""

    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"\xff" * 100_000  # 5 MB in all, over the 4 MB limit

    response = httpx.post(
        f"{url}/pose", content=chunks(), timeout=30, headers={"content-type": "image/jpeg"}
    )
    assert_error(response, 413, "payload_too_large")
    assert httpx.get(f"{url}/health/ready").status_code == 200
