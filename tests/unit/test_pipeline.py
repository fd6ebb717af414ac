"""The pipeline composes stages: order, threads, what each stage sees, and the decode stage's
choice of scale (no model: stand-in stages where inference would be)."""

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from dipr.core.crops import Crop
from dipr.core.decoders import WithJpegDecoder
from dipr.core.errors import (
    InvalidInput,
    Overloaded,
    UndecodableImage,
    UnsupportedImage,
    image_place,
)
from dipr.core.images import DecodedImage
from dipr.core.nvimgcodec_jpeg import NvimgcodecJpegDecoder
from dipr.core.prepare import CroppedImage
from dipr.service.admission import DecodeBudget
from dipr.service.fair_pool import FairPool
from dipr.service.pipeline import (
    ImageInput,
    ImageStage,
    ImageWork,
    Pipeline,
    PoseOptions,
    RequestStage,
    required,
)
from dipr.service.stages.admit import AdmitStage
from dipr.service.stages.crop import CropStage
from dipr.service.stages.decode import DecodeStage
from dipr.service.stages.to_image import ToImageStage
from tests.helpers.image_files import blobs_jpeg


class Recording(ImageStage):
    def __init__(self, name: str, log: list[tuple[str, str, bool]], offload: bool) -> None:
        self.name, self.log, self.offload = name, log, offload

    def run_image(self, work: ImageWork) -> None:
        on_loop = threading.current_thread() is threading.main_thread()
        self.log.append((self.name, threading.current_thread().name, on_loop))
        work.decoded = work.decoded or DecodedImage(np.zeros((4, 4, 3), np.uint8), 1)
        work.size = (4, 4)


class Gathering(RequestStage):
    def __init__(self, log: list[tuple[str, str, bool]]) -> None:
        self.log = log
        self.sizes: list[int] = []

    async def run_request(self, works: list[ImageWork], deadline: float) -> None:
        self.sizes.append(len(works))
        self.log.append(("request", threading.current_thread().name, True))


class FakePose(RequestStage):
    """Keypoints at the crop's centre, scores 0.5: what a model's outputs look like."""

    async def run_request(self, works: list[ImageWork], deadline: float) -> None:
        for work in works:
            n = len(required(work.cropped, "cropped").crops)
            work.pose_outputs = {
                "keypoints": np.full((n, 17, 2), 127.5, np.float32),
                "keypoints_raw": np.full((n, 17, 2), 127.5, np.float32),
                "scores": np.full((n, 17), 0.5, np.float32),
            }


@pytest.fixture(scope="module")
def pool() -> Iterator[FairPool]:
    pool = FairPool(2)
    pool.start()
    yield pool
    pool.stop()


def image(width: int = 512, height: int = 512, boxes=None) -> ImageInput:
    return ImageInput(blobs_jpeg(width, height, [(width / 2, height / 2)], 20), None, boxes)


async def test_consecutive_offloaded_stages_share_one_thread_hop_per_image(pool):
    log: list[tuple[str, str, bool]] = []
    gathering = Gathering(log)
    stages = [
        Recording("a", log, offload=True),
        Recording("b", log, offload=True),
        gathering,
        Recording("c", log, offload=False),
    ]
    results = await Pipeline(stages, pool).run([image()] * 3, PoseOptions(), time.monotonic() + 5)
    assert [(r.width, r.height) for r in results] == [(4, 4)] * 3
    names = [entry[0] for entry in log]
    assert names.count("a") == names.count("b") == names.count("c") == 3
    assert names.index("request") > max(i for i, n in enumerate(names) if n in "ab")
    assert gathering.sizes == [3]  # once per request, with every image
    threads = {}
    for name, thread, on_loop in log:
        threads.setdefault(name, []).append((thread, on_loop))
    assert all(not on_loop for _, on_loop in threads["a"] + threads["b"])
    assert all(on_loop for _, on_loop in threads["c"])
    # a and b of one image ran back to back in the same worker thread.
    pairs = [log[i : i + 2] for i in range(len(log) - 1) if log[i][0] == "a"]
    assert all(first[1] == second[1] and second[0] == "b" for first, second in pairs)


def test_a_stage_that_needs_an_earlier_one_says_so():
    work = ImageWork(image(), PoseOptions(), 0)
    with pytest.raises(RuntimeError, match="no stage before this one set `decoded`"):
        CropStage((256, 256), 1.25).run_image(work)


def admit(budget: DecodeBudget | None = None) -> AdmitStage:
    budget = budget or DecodeBudget(1000)
    return AdmitStage(budget, (256, 256), 1.25, max_pixels=10**8, reduced=True, detecting=False)


def pose_pipeline(pool: FairPool, budget: DecodeBudget | None = None) -> Pipeline:
    return Pipeline(
        [
            admit(budget),
            DecodeStage((256, 256), 1.25, reduced=True),
            CropStage((256, 256), 1.25),
            FakePose(),
            ToImageStage(),
        ],
        pool,
    )


async def test_images_come_out_in_order_with_one_person_per_box_mapped_back(pool):
    boxes = [(100.0, 100.0, 300.0, 400.0), (0.0, 0.0, 64.0, 64.0)]
    images = [image(512, 512), image(640, 480, boxes)]
    first, second = await pose_pipeline(pool).run(images, PoseOptions(), time.monotonic() + 5)
    assert (first.width, first.height, len(first.persons)) == (512, 512, 1)
    assert first.persons[0].box == (0.0, 0.0, 512.0, 512.0)  # no boxes: the whole image
    assert [p.box for p in second.persons] == images[1].boxes
    # Keypoints at the input's centre come back to each box's centre (pixel indices).
    np.testing.assert_allclose(first.persons[0].keypoints, 255.5, atol=1e-9)
    np.testing.assert_allclose(second.persons[0].keypoints, [[199.5, 249.5]] * 17, atol=1e-9)
    assert second.persons[1].score == pytest.approx(0.5)
    assert first.pixels is None and second.pixels is None


async def test_kept_pixels_are_decoded_at_full_size(pool):
    deadline = time.monotonic() + 5
    (drawn,) = await pose_pipeline(pool).run([image()], PoseOptions(keep_pixels=True), deadline)
    assert drawn.pixels is not None and drawn.pixels.shape == (512, 512, 3)
    work = ImageWork(image(), PoseOptions(), 0)
    await admit().run_request([work], deadline)
    DecodeStage((256, 256), 1.25, reduced=True).run_image(work)
    assert required(work.decoded, "decoded").reduction == 2  # without: 512 → 256 at 1/2


async def test_with_nvimgcodec_a_jpeg_is_decoded_admitted_and_refined_at_full_scale(pool):
    """The stages share the runtime's decoder: nvImageCodec (its CPU backend) decodes the JPEG in
    full, admission counted every pixel, and boxes found later need no second decode."""
    decoder = WithJpegDecoder(NvimgcodecJpegDecoder("cpu"))
    budget = DecodeBudget(1000)
    admit = AdmitStage(
        budget, (256, 256), 1.25, 10**8, reduced=True, detecting=False, decoder=decoder
    )
    work = ImageWork(image(512, 512), PoseOptions(), 0)
    await admit.run_request([work], time.monotonic() + 5)
    assert budget.in_flight() == pytest.approx(512 * 512 / 1e6 * 1.125)  # OpenCV's: 1/2 scale
    DecodeStage((256, 256), 1.25, reduced=True, decoder=decoder).run_image(work)
    decoded = required(work.decoded, "decoded")
    assert (decoded.reduction, decoded.pixels.shape) == (1, (512, 512, 3))
    work.detected, work.boxes = [], [(200.0, 200.0, 260.0, 300.0)]  # as if found by a detector
    CropStage((256, 256), 1.25, decoder=decoder).run_image(work)
    assert required(work.cropped, "cropped").inputs.shape == (1, 256, 256, 3)


async def test_a_request_over_the_budget_is_refused_before_anything_is_decoded(pool):
    budget = DecodeBudget(4)
    budget.admit([3.5])  # someone else's heavy request holds most of it
    decoded: list[ImageWork] = []

    class Watching(DecodeStage):
        def run_image(self, work: ImageWork) -> None:
            decoded.append(work)
            super().run_image(work)

    small_box = [(10.0, 10.0, 40.0, 40.0)]  # decoded in full: 0.59 MP of 2048×256
    pipeline = Pipeline(
        [admit(budget), Watching((256, 256), 1.25, reduced=True), CropStage((256, 256), 1.25)],
        pool,
    )
    with pytest.raises(Overloaded, match="budget") as refusal:
        await pipeline.run([image(2048, 256, small_box)], PoseOptions(), time.monotonic() + 5)
    assert refusal.value.cause == "decode_budget" and decoded == []
    assert budget.in_flight() == pytest.approx(3.5)


async def test_pixels_are_dropped_once_cropped_and_the_budget_given_back(pool):
    budget = DecodeBudget(1000)
    seen: list[tuple[bool, float]] = []

    class Inspecting(RequestStage):
        async def run_request(self, works: list[ImageWork], deadline: float) -> None:
            seen.extend((work.decoded is None, budget.in_flight()) for work in works)

    boxes = [(100.0, 100.0, 300.0, 400.0)]
    pipeline = Pipeline(
        [
            admit(budget),
            DecodeStage((256, 256), 1.25, reduced=True),
            CropStage((256, 256), 1.25),
            Inspecting(),
            FakePose(),
            ToImageStage(),
        ],
        pool,
    )
    (result,) = await pipeline.run([image(640, 480, boxes)], PoseOptions(), time.monotonic() + 5)
    assert seen == [(True, 0.0)]  # after cropping, before inference: nothing held
    assert (result.width, result.height, len(result.persons)) == (640, 480, 1)
    assert budget.in_flight() == 0


async def test_a_failed_request_gives_its_budget_back(pool):
    budget = DecodeBudget(1000)
    outside = [(600.0, 600.0, 900.0, 900.0)]  # its placement is refused when cropping
    with pytest.raises(InvalidInput):
        await pose_pipeline(pool, budget).run(
            [image(), image(512, 512, outside)], PoseOptions(), time.monotonic() + 5
        )
    assert budget.in_flight() == 0


def test_an_error_placed_keeps_its_class_and_is_placed_once():
    error = Overloaded("the queue is full", cause="pose_queue")
    assert error.at("image 2 (b.jpg)") is error
    error.at("image 9")  # an outer place does not override the inner, more precise one
    assert isinstance(error, Overloaded) and error.cause == "pose_queue"
    assert error.message == str(error) == "image 2 (b.jpg): the queue is full"


@pytest.mark.parametrize(
    ("index", "name", "place"),
    [
        (0, None, "image 1"),
        (1, "", "image 2"),
        (2, "holiday.jpg", "image 3 (holiday.jpg)"),
        (0, "a\r\nforged: line\x00.jpg", "image 1 (aforged: line.jpg)"),
        (0, "\x1b\x07", "image 1"),
        (0, "é" * 200, f"image 1 ({'é' * 79}…)"),
    ],
)
def test_an_image_is_named_by_position_and_its_printable_file_name(index, name, place):
    assert image_place(index, name) == place


def truncated(data: bytes) -> bytes:
    """Cut mid-scan: the header reads, the decode fails."""
    return data[: len(data) // 2]


async def test_an_image_that_fails_to_decode_is_named_among_the_others(pool):
    images = [
        ImageInput(image().data, "image/jpeg", None, "a.jpg"),
        ImageInput(truncated(image().data), "image/jpeg", None, "b.jpg"),
        ImageInput(image().data, "image/jpeg", None, "c.jpg"),
    ]
    with pytest.raises(UndecodableImage) as refused:
        await pose_pipeline(pool).run(images, PoseOptions(), time.monotonic() + 5)
    assert refused.value.message == "image 2 (b.jpg): corrupt or truncated JPEG data"


async def test_a_box_refused_when_cropping_names_its_image(pool):
    outside = [(600.0, 600.0, 900.0, 900.0)]
    images = [image(), ImageInput(image().data, None, outside, "b.jpg")]
    with pytest.raises(InvalidInput, match=r"^image 2 \(b\.jpg\): box \[600, 600, 900, 900\] lies"):
        await pose_pipeline(pool).run(images, PoseOptions(), time.monotonic() + 5)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (ImageInput(b"GIF89a" + bytes(20), None, None, "c.gif"), UnsupportedImage, "GIF images"),
        (ImageInput(b"", "image/png", None, "c.png"), UndecodableImage, "empty"),
        (ImageInput(b"\xff\xd8\xff", "text/plain", None, "c.txt"), UnsupportedImage, "text/plain"),
        (
            ImageInput(image().data, None, [(100.0, 50.0, 30.0, 80.0)], "c.jpg"),
            InvalidInput,
            "COCO",
        ),
    ],
)
async def test_an_image_refused_at_admission_is_named(bad, error, message):
    works = [
        ImageWork(source, PoseOptions(), i) for i, source in enumerate([image(), image(), bad])
    ]
    for work in works:
        work.boxes = work.source.boxes
    with pytest.raises(error, match=message) as refused:
        await admit().run_request(works, time.monotonic() + 5)
    assert refused.value.message.startswith(f"image 3 ({bad.name}): ")


def test_an_image_without_persons_has_none_and_reads_no_outputs():
    """A detector that found no one: no crops, and the batcher answers no rows ({})."""
    work = ImageWork(image(), PoseOptions(), 0)
    work.cropped = CroppedImage([], [], np.zeros((0, 256, 256, 3), np.uint8))
    work.pose_outputs = {}
    ToImageStage().run_image(work)
    assert work.persons == []


def test_poses_come_back_to_image_pixels_as_each_crop_maps_them():
    generator = np.random.default_rng(3)
    crops = [Crop.from_matrix(np.array([[2.0, 0.1, -30.0], [-0.2, 1.5, 12.0]])) for _ in range(2)]
    keypoints = generator.uniform(0, 256, (2, 17, 2)).astype(np.float32)
    keypoints_raw = keypoints + np.float32(0.5)
    scores = generator.uniform(0, 1, (2, 17)).astype(np.float32)
    work = ImageWork(image(), PoseOptions(), 0)
    boxes = [(0.0, 0.0, 10.0, 10.0), (5.0, 5.0, 50.0, 50.0)]
    work.cropped = CroppedImage(boxes, crops, np.zeros((2, 256, 256, 3), np.uint8))
    work.pose_outputs = {"keypoints": keypoints, "keypoints_raw": keypoints_raw, "scores": scores}
    ToImageStage().run_image(work)
    for row, person in enumerate(work.persons):
        assert person.box == boxes[row]
        assert np.array_equal(person.keypoints, crops[row].to_image(keypoints[row]))
        assert np.array_equal(person.keypoints_raw, crops[row].to_image(keypoints_raw[row]))
        assert person.score == float(scores[row].mean())
        assert person.box_score is None
