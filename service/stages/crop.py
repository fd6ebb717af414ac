"""Stage: the person boxes (or the whole picture) → network inputs, one warp each, as soon as the
boxes are known: right after decoding, or after detection for the images it finds persons in
(the stage is placed at both points). Boxes a detector found may need a finer decode than the one
it ran on: the picture is decoded again then. Once cropped, the pixels are dropped."""

from dipr.core.decoders import OPENCV, ImageDecoder
from dipr.core.prepare import crop_boxes, refine_for_boxes
from dipr.service.pipeline import ImageStage, ImageWork, required


class CropStage(ImageStage):
    name = "crop"
    offload = True

    def __init__(
        self, input_size: tuple[int, int], padding: float, decoder: ImageDecoder = OPENCV
    ) -> None:
        self.input_size = input_size
        self.padding = padding
        self.decoder = decoder  # the decode stage's, for the finer decode

    def applies(self, work: ImageWork) -> bool:
        awaiting_detection = work.detector_input is not None and work.detected is None
        return work.cropped is None and not awaiting_detection

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
                decoder=self.decoder,
            )
        work.cropped = crop_boxes(decoded, work.boxes, self.input_size, padding=self.padding)
        work.decoding_done()
