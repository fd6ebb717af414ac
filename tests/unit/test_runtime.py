"""The runtime in-process: readiness only after warm-up, and the served pipeline computing what
`dipr eval` computes (no server: the app is driven through httpx's ASGI transport)."""

import asyncio
import threading
import time
from collections.abc import Iterator

import cv2
import httpx
import numpy as np
import onnxruntime as ort
import pytest

from dipr.core import pose_contract
from dipr.core.crops import PADDING
from dipr.core.decoders import WithJpegDecoder
from dipr.core.detection import DEFAULT_MIN_PERSON_SCORE
from dipr.core.errors import InvalidInput, NotReady
from dipr.core.nvimgcodec_jpeg import NvimgcodecJpegDecoder
from dipr.core.prepare import prepare_image
from dipr.models.registry import DEFAULT_ONNX
from dipr.service.backend import OnnxBackend
from dipr.service.http.app import create_app
from dipr.service.pipeline import ImageInput, ImagePoses, PoseOptions
from dipr.service.preflight import gpu_visible
from dipr.service.runtime import Runtime
from dipr.service.settings import Settings
from tests.helpers.image_files import side_by_side
from tests.helpers.paths import PHOTOS

PHOTO = (PHOTOS / "astronaut.jpg").read_bytes()
THREE = ("astronaut.jpg", "camera.jpg", "grace_hopper.jpg")  # one person each
SMALL = {"max_batch_size": 2, "max_queue": 16, "max_boxes": 8, "max_images": 4}


class HeldWarmUp:
    """Replaces OnnxBackend.warm_up: records that it began, waits to be released, then warms up."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.began, self.release = threading.Event(), threading.Event()
        self.finished: list[list[int]] = []
        original = OnnxBackend.warm_up

        def held(backend: OnnxBackend, sizes: list[int], alongside: int = 0) -> None:
            self.began.set()
            assert self.release.wait(60)
            original(backend, sizes, alongside)
            self.finished.append(list(sizes))

        monkeypatch.setattr(OnnxBackend, "warm_up", held)


async def test_ready_only_after_the_warm_up_has_run(monkeypatch):
    held = HeldWarmUp(monkeypatch)
    app = create_app(Settings(**SMALL))
    runtime: Runtime = app.state.runtime
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dipr") as client:
        assert (await client.get("/health/ready")).json()["reason"] == "loading the models"
        loading = threading.Thread(target=runtime.load)
        loading.start()
        try:
            assert await asyncio.to_thread(held.began.wait, 60)
            await asyncio.sleep(0.2)  # were readiness set before the warm-up, it would show now
            answer = await client.get("/health/ready")
            assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
            assert runtime.readiness() == "loading the models"
            headers = {"content-type": "image/jpeg"}
            pose = await client.post("/pose", content=PHOTO, headers=headers)
            assert pose.status_code == 503 and pose.json()["error"]["code"] == "not_ready"
        finally:
            held.release.set()
            await asyncio.to_thread(loading.join, 60)
        assert held.finished == [[1, 2], [1, 2, 4, 8]]  # the pose model's, the detector's
        assert (await client.get("/health/ready")).json() == {"status": "ready"}
        pose = await client.post("/pose", content=PHOTO, headers=headers)
        assert pose.status_code == 200
        runtime.stop()


async def test_a_model_that_cannot_load_leaves_the_runtime_unready_with_the_reason(tmp_path):
    runtime = Runtime(Settings(model_path=tmp_path / "missing.onnx", **SMALL))
    runtime.load()
    assert runtime.readiness() == f"model file not found: {tmp_path / 'missing.onnx'}"
    with pytest.raises(NotReady, match="model file not found"):
        await runtime.estimate([ImageInput(PHOTO, None, None)], PoseOptions(), time.monotonic() + 5)


async def test_the_service_crops_and_maps_back_as_evaluation_does():
    """The runtime built from the default settings against the core's preparation (what
    `dipr eval` runs) and the model alone: the same keypoints to float precision."""
    boxes = [(120.0, 20.0, 400.0, 500.0), (0.0, 0.0, 256.0, 256.0)]
    runtime = Runtime(Settings(**SMALL))
    runtime.load()
    try:
        (served,) = await runtime.estimate(
            [ImageInput(PHOTO, "image/jpeg", boxes)], PoseOptions(), time.monotonic() + 30
        )
    finally:
        runtime.stop()
    session = ort.InferenceSession(str(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    prepared = prepare_image(PHOTO, None, boxes, (256, 256), padding=PADDING, max_pixels=10**8)
    keypoints, scores = session.run(
        [pose_contract.KEYPOINTS, pose_contract.SCORES],
        {pose_contract.INPUT: prepared.cropped.inputs},
    )
    assert [p.box for p in served.persons] == boxes
    for person, crop, expected, expected_scores in zip(
        served.persons, prepared.cropped.crops, keypoints, scores, strict=True
    ):
        np.testing.assert_allclose(person.keypoints, crop.to_image(expected), atol=1e-3)
        np.testing.assert_allclose(person.scores, expected_scores, atol=1e-5)
        assert person.score == pytest.approx(float(expected_scores.mean()), abs=1e-5)


@pytest.fixture(scope="module")
def detecting() -> Iterator[Runtime]:
    runtime = Runtime(Settings(**SMALL))
    runtime.load()
    assert runtime.readiness() is None
    yield runtime
    runtime.stop()


def estimate(runtime: Runtime, image: ImageInput, **options: object) -> ImagePoses:
    coroutine = runtime.estimate([image], PoseOptions(**options), time.monotonic() + 30)
    (result,) = asyncio.run(coroutine)
    return result


def test_an_image_without_boxes_gives_every_person_found_best_first(detecting):
    result = estimate(detecting, ImageInput(side_by_side(*THREE), "image/jpeg", None))
    assert len(result.persons) == 3
    scores = [person.box_score for person in result.persons]
    assert scores == sorted(scores, reverse=True) and min(scores) >= DEFAULT_MIN_PERSON_SCORE
    # One person per photo: the boxes' centres fall in the three thirds of the picture.
    thirds = sorted(int((p.box[0] + p.box[2]) / 2 // (result.width / 3)) for p in result.persons)
    assert thirds == [0, 1, 2]
    for person in result.persons:
        x1, y1, x2, y2 = person.box
        assert 0 <= x1 < x2 <= result.width and 0 <= y1 < y2 <= result.height
        inside = (person.keypoints[:, 0] >= x1 - 1) & (person.keypoints[:, 0] <= x2 + 1)
        assert inside[person.scores > 0.5].all()  # confident keypoints lie in their own box


def test_nobody_in_the_image_is_an_empty_list(detecting):
    blank = cv2.imencode(".png", np.full((300, 400, 3), 128, np.uint8))[1].tobytes()
    assert estimate(detecting, ImageInput(blank, None, None)).persons == []


def test_the_threshold_and_detect_false_per_request(detecting):
    image = ImageInput(side_by_side(*THREE), "image/jpeg", None)
    assert estimate(detecting, image, min_score=0.99).persons == []
    (whole,) = estimate(detecting, image, detect=False).persons
    assert whole.box == (0.0, 0.0, 1370.0, 480.0) and whole.box_score is None


def test_boxes_sent_are_the_persons_returned_without_detection(detecting):
    boxes = [(10.0, 10.0, 200.0, 470.0), (500.0, 0.0, 900.0, 480.0)]
    result = estimate(detecting, ImageInput(side_by_side(*THREE), "image/jpeg", boxes))
    assert [p.box for p in result.persons] == boxes
    assert all(p.box_score is None for p in result.persons)


def test_with_detection_off_an_image_without_boxes_is_one_crop():
    runtime = Runtime(Settings(**SMALL, detect=False))
    runtime.load()
    try:
        assert runtime.detector is None and runtime.readiness() is None
        image = ImageInput(side_by_side(*THREE), "image/jpeg", None)
        (whole,) = estimate(runtime, image).persons
        assert whole.box == (0.0, 0.0, 1370.0, 480.0)
        with pytest.raises(InvalidInput, match="DIPR_DETECT=false"):
            estimate(runtime, image, detect=True)
    finally:
        runtime.stop()


@pytest.mark.skipif(gpu_visible(), reason="this machine has a GPU: nvJPEG may well work")
def test_the_nvimgcodec_decoder_without_a_gpu_leaves_the_runtime_unready_naming_its_variable():
    runtime = Runtime(Settings(**SMALL, jpeg_decoder="nvimgcodec"))
    runtime.load()  # fails before the models load
    reason = runtime.readiness()
    assert reason is not None and reason.startswith("DIPR_JPEG_DECODER=nvimgcodec: "), reason
    assert "GPU 0" in reason and runtime.model is None
    with pytest.raises(NotReady, match="DIPR_JPEG_DECODER"):
        estimate(runtime, ImageInput(PHOTO, None, None))


@pytest.fixture(scope="module")
def nvimgcodec_on_the_cpu() -> Iterator[Runtime]:
    """The service with JPEGs decoded by nvImageCodec, its CPU backend (what the GPU setting
    does, but for the device: the runtime takes the decoder that no setting offers)."""
    runtime = Runtime(Settings(**SMALL), WithJpegDecoder(NvimgcodecJpegDecoder("cpu")))
    runtime.load()
    assert runtime.readiness() is None
    yield runtime
    runtime.stop()


@pytest.fixture(scope="module")
def opencv_full_scale() -> Iterator[Runtime]:
    runtime = Runtime(Settings(**SMALL, reduced_decode=False))
    runtime.load()
    yield runtime
    runtime.stop()


@pytest.mark.parametrize("boxes", [None, [(120.0, 20.0, 400.0, 500.0)]], ids=["detected", "box"])
def test_with_nvimgcodec_the_keypoints_are_those_of_opencv_decoding_every_pixel(
    nvimgcodec_on_the_cpu, opencv_full_scale, detecting, boxes
):
    image = ImageInput(PHOTO, "image/jpeg", boxes)
    served = estimate(nvimgcodec_on_the_cpu, image)
    # The same pixels (libjpeg-turbo both), the same crops: the same answer.
    full = estimate(opencv_full_scale, image)
    assert len(served.persons) == len(full.persons) == 1
    for person, expected in zip(served.persons, full.persons, strict=True):
        assert person.box == pytest.approx(expected.box, abs=1e-3)
        np.testing.assert_allclose(person.keypoints, expected.keypoints, atol=1e-3)
        np.testing.assert_allclose(person.scores, expected.scores, atol=1e-5)
    # The default service decodes this 512×512 photo at 1/2 (libjpeg's scaled IDCT averages
    # what a bilinear warp from every pixel samples): the confident joints stay within 10 px of
    # each other (measured: 5.7 px detected, 6.8 px in the box; the box within 6 px).
    reduced = estimate(detecting, image)
    (person,), (expected,) = served.persons, reduced.persons
    assert person.box == pytest.approx(expected.box, abs=8)
    confident = (person.scores >= 0.3) & (expected.scores >= 0.3)
    assert confident.sum() >= 10
    distance = np.linalg.norm(person.keypoints - expected.keypoints, axis=1)[confident]
    assert distance.max() < 10, distance
