"""Stage: a request's image headers read and its boxes' shapes checked, then its cost held on the
decode budget, or the request refused at once (503) when the budget has no room for it. An image
refused here is named in the error (its position and file name)."""

from dipr.core.crops import check_box_shape
from dipr.core.decode_cost import decode_cost_mp
from dipr.core.decoders import OPENCV, ImageDecoder
from dipr.core.errors import DiprError, image_place
from dipr.core.images import read_header
from dipr.service.admission import DecodeBudget
from dipr.service.pipeline import ImageWork, RequestStage


class AdmitStage(RequestStage):
    name = "admit"

    def __init__(
        self,
        budget: DecodeBudget,
        decode_size: tuple[int, int],
        padding: float,
        max_pixels: int,
        reduced: bool,
        detecting: bool,
        decoder: ImageDecoder = OPENCV,
    ) -> None:
        self.budget = budget
        self.decode_size = decode_size
        self.padding = padding
        self.max_pixels = max_pixels
        self.reduced = reduced
        self.detecting = detecting  # a detector runs for images sent without boxes
        self.decoder = decoder  # the decode stage's: it says at which scale images decode

    async def run_request(self, works: list[ImageWork], deadline: float) -> None:
        costs = []
        for work in works:
            source = work.source
            try:
                # Headers only (microseconds each): on the event loop, before any decoding.
                work.header = read_header(source.data, source.media_type, self.max_pixels)
                for box in work.boxes or ():
                    check_box_shape(box)
            except DiprError as error:
                error.at(image_place(work.index, source.name))  # which of the request's images
                raise
            cost = decode_cost_mp(
                work.header,
                work.boxes,
                self.decode_size,
                padding=self.padding,
                reduced=self.reduced and not work.options.keep_pixels,
                detect=self.detecting and work.wants_detection,
                decoder=self.decoder,
            )
            costs.append(cost)
        admission = self.budget.admit(costs)
        for work in works:
            work.admission = admission
