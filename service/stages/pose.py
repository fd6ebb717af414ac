"""Stage: every crop of a request through the pose model, batched with other requests' crops."""

import numpy as np

from dipr.service.crop_submitter import CropSubmitter
from dipr.service.pipeline import ImageWork, RequestStage, required


class PoseStage(RequestStage):
    name = "pose"

    def __init__(self, batcher: CropSubmitter) -> None:
        self.batcher = batcher

    async def run_request(self, works: list[ImageWork], deadline: float) -> None:
        per_image = [required(work.cropped, "cropped").inputs for work in works]
        if not per_image:
            return
        # One image's crops are already one array: no copy.
        inputs = per_image[0] if len(per_image) == 1 else np.concatenate(per_image)
        outputs = await self.batcher.submit(inputs, deadline)
        row = 0
        for work, inputs in zip(works, per_image, strict=True):
            rows = slice(row, row + len(inputs))
            work.pose_outputs = {name: values[rows] for name, values in outputs.items()}
            row += len(inputs)
