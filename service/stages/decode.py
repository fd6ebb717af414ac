"""Stage: the image's bytes → its pixels, at the coarsest scale its crops allow."""

from dipr.core.images import read_header
from dipr.core.prepare import decode_for_boxes
from dipr.service.pipeline import ImageStage, ImageWork


class DecodeStage(ImageStage):
    name = "decode"
    offload = True  # decoding is most of the CPU work outside the networks

    def __init__(
        self, input_size: tuple[int, int], padding: float, max_pixels: int, reduced: bool
    ) -> None:
        self.input_size = input_size
        self.padding = padding
        self.max_pixels = max_pixels
        self.reduced = reduced

    def run_image(self, work: ImageWork) -> None:
        source = work.source
        work.header = read_header(source.data, source.media_type, self.max_pixels)
        # Without boxes, the whole picture's scale: the letterbox of a detector whose input is
        # as large as the pose model's needs no more.
        work.decoded = decode_for_boxes(
            source.data,
            work.header,
            work.boxes,
            self.input_size,
            padding=self.padding,
            # Pixels kept for drawing are drawn on at full size.
            reduced=self.reduced and not work.options.keep_pixels,
        )
