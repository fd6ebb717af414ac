"""Stage: the person boxes (or the whole picture) → network inputs, one warp each."""

from dipr.core.prepare import crop_boxes
from dipr.service.pipeline import ImageStage, ImageWork, required


class CropStage(ImageStage):
    offload = True

    def __init__(self, input_size: tuple[int, int], padding: float) -> None:
        self.input_size = input_size
        self.padding = padding

    def run_image(self, work: ImageWork) -> None:
        decoded = required(work.decoded, "decoded")
        work.cropped = crop_boxes(decoded, work.boxes, self.input_size, padding=self.padding)
