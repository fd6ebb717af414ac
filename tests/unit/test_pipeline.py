"""The pipeline composes stages: order, threads, what each stage sees, and the decode stage's
choice of scale (no model: stand-in stages where inference would be)."""

import threading
import time

import numpy as np
import pytest

from dipr.core.images import DecodedImage
from dipr.service.pipeline import (
    ImageInput,
    ImageStage,
    ImageWork,
    Pipeline,
    PoseOptions,
    RequestStage,
    required,
)
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


def image(width: int = 512, height: int = 512, boxes=None) -> ImageInput:
    return ImageInput(blobs_jpeg(width, height, [(width / 2, height / 2)], 20), None, boxes)


async def test_consecutive_offloaded_stages_share_one_thread_hop_per_image():
    log: list[tuple[str, str, bool]] = []
    gathering = Gathering(log)
    stages = [
        Recording("a", log, offload=True),
        Recording("b", log, offload=True),
        gathering,
        Recording("c", log, offload=False),
    ]
    results = await Pipeline(stages).run([image()] * 3, PoseOptions(), time.monotonic() + 5)
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
    work = ImageWork(image(), PoseOptions())
    with pytest.raises(RuntimeError, match="no stage before this one set `decoded`"):
        CropStage((256, 256), 1.25).run_image(work)


def pose_pipeline() -> Pipeline:
    return Pipeline(
        [
            DecodeStage((256, 256), 1.25, max_pixels=10**8, reduced=True),
            CropStage((256, 256), 1.25),
            FakePose(),
            ToImageStage(),
        ]
    )


async def test_images_come_out_in_order_with_one_person_per_box_mapped_back():
    boxes = [(100.0, 100.0, 300.0, 400.0), (0.0, 0.0, 64.0, 64.0)]
    images = [image(512, 512), image(640, 480, boxes)]
    first, second = await pose_pipeline().run(images, PoseOptions(), time.monotonic() + 5)
    assert (first.width, first.height, len(first.persons)) == (512, 512, 1)
    assert first.persons[0].box == (0.0, 0.0, 512.0, 512.0)  # no boxes: the whole image
    assert [p.box for p in second.persons] == images[1].boxes
    # Keypoints at the input's centre come back to each box's centre (pixel indices).
    np.testing.assert_allclose(first.persons[0].keypoints, 255.5, atol=1e-9)
    np.testing.assert_allclose(second.persons[0].keypoints, [[199.5, 249.5]] * 17, atol=1e-9)
    assert second.persons[1].score == pytest.approx(0.5)
    assert first.pixels is None and second.pixels is None


async def test_kept_pixels_are_decoded_at_full_size():
    deadline = time.monotonic() + 5
    (drawn,) = await pose_pipeline().run([image()], PoseOptions(keep_pixels=True), deadline)
    assert drawn.pixels is not None and drawn.pixels.shape == (512, 512, 3)
    work = ImageWork(image(), PoseOptions())
    DecodeStage((256, 256), 1.25, max_pixels=10**8, reduced=True).run_image(work)
    assert required(work.decoded, "decoded").reduction == 2  # without: 512 → 256 at 1/2
