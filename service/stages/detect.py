"""Stage: the letterboxed images of a request through the detector, batched with other requests'
images; the persons it finds above the threshold become the boxes to crop, best first."""

import numpy as np

from dipr.core.detection import BoxSource, boxes_of, persons_in
from dipr.service.crop_submitter import CropSubmitter
from dipr.service.pipeline import ImageWork, RequestStage, required


class DetectStage(RequestStage):
    name = "detect"

    def __init__(self, batcher: CropSubmitter, min_score: float, box_source: BoxSource) -> None:
        self.batcher = batcher
        self.min_score = min_score
        self.box_source = box_source

    async def run_request(self, works: list[ImageWork], deadline: float) -> None:
        detecting = [work for work in works if work.detector_input is not None]
        if not detecting:
            return
        letterboxes = [required(work.detector_input, "detector_input") for work in detecting]
        inputs = np.concatenate([letterbox.inputs for letterbox in letterboxes])
        outputs = await self.batcher.submit(inputs, deadline)
        for row, (work, letterbox) in enumerate(zip(detecting, letterboxes, strict=True)):
            threshold = work.options.min_score
            work.detected = persons_in(
                {name: values[row] for name, values in outputs.items()},
                letterbox.crops[0],
                required(work.size, "size"),
                self.min_score if threshold is None else threshold,
                self.box_source,
            )
            work.boxes = boxes_of(work.detected)
