"""Stage: an image to detect persons in → the detector's input, the whole picture letterboxed."""

from dipr.core.detection import letterbox
from dipr.service.pipeline import ImageStage, ImageWork, required


class LetterboxStage(ImageStage):
    name = "letterbox"
    offload = True  # a warp: in the decoding thread, right after the decode

    def __init__(self, input_size: tuple[int, int]) -> None:
        self.input_size = input_size

    def applies(self, work: ImageWork) -> bool:
        return work.wants_detection

    def run_image(self, work: ImageWork) -> None:
        work.detector_input = letterbox(required(work.decoded, "decoded"), self.input_size)
