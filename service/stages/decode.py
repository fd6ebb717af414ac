"""Stage: the image's bytes → its pixels, at the coarsest scale its crops (and the decoder)
allow."""

from dipr.core.decoders import OPENCV, ImageDecoder
from dipr.core.prepare import decode_for_boxes
from dipr.service.pipeline import ImageStage, ImageWork, required


class DecodeStage(ImageStage):
    name = "decode"
    offload = True  # decoding is most of the CPU work outside the networks

    def __init__(
        self,
        input_size: tuple[int, int],
        padding: float,
        reduced: bool,
        decoder: ImageDecoder = OPENCV,
    ) -> None:
        self.input_size = input_size
        self.padding = padding
        self.reduced = reduced
        self.decoder = decoder

    def run_image(self, work: ImageWork) -> None:
        # Without boxes, the whole picture's scale: the letterbox of a detector whose input is
        # as large as the pose model's needs no more.
        decoded = work.decoded = decode_for_boxes(
            work.source.data,
            required(work.header, "header"),
            work.boxes,
            self.input_size,
            padding=self.padding,
            # Pixels kept for drawing are drawn on at full size.
            reduced=self.reduced and not work.options.keep_pixels,
            decoder=self.decoder,
        )
        work.size = (decoded.width, decoded.height)
