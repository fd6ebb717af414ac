"""Stage: the person boxes (or the whole picture) → network inputs, one warp each. Boxes a
detector found may need a finer decode than the one it ran on: the picture is decoded again
then."""

from dipr.core.prepare import crop_boxes, refine_for_boxes
from dipr.service.pipeline import ImageStage, ImageWork, required


class CropStage(ImageStage):
    name = "crop"
    offload = True

    def __init__(self, input_size: tuple[int, int], padding: float) -> None:
        self.input_size = input_size
        self.padding = padding

    def run_image(self, work: ImageWork) -> None:
        decoded = required(work.decoded, "decoded")
        if work.detected is not None:  # boxes found after decoding: fine enough for them?
            decoded = work.decoded = refine_for_boxes(
                work.source.data,
                required(work.header, "header"),
                decoded,
                required(work.boxes, "boxes"),
                self.input_size,
                padding=self.padding,
            )
        work.cropped = crop_boxes(decoded, work.boxes, self.input_size, padding=self.padding)
