"""What decoding an image will cost, known from its header and boxes before any pixel is decoded.

The unit is the megapixel: the pixels decoded at the scale its crops allow, plus an eighth of the
stored pixels, because a JPEG decoded at 1/8 scale still reads every coefficient. Measured with
OpenCV on 12 MP and 49 MP JPEGs, decode time tracks this sum within ±25 % from 1/8 to full scale
(about 7 ms per megapixel on one core here).

A decoder that cannot reduce (nvImageCodec: `core.decoders.WithJpegDecoder`) is counted at the
scale it decodes at, every pixel: its pixels still reach the host at that size, where the crops
are warped from them and held until then.
"""

import math
from collections.abc import Sequence

from dipr.core.crops import PADDING, Box
from dipr.core.decoders import OPENCV, ImageDecoder
from dipr.core.images import ImageHeader
from dipr.core.prepare import coarsest_reduction

# Reading the entropy-coded data: paid at any decoded scale.
STORED_PIXEL_SHARE = 1 / 8


def decode_cost_mp(
    header: ImageHeader,
    boxes: Sequence[Box] | None,
    input_size: tuple[int, int],
    *,
    padding: float = PADDING,
    reduced: bool = True,
    detect: bool = False,
    decoder: ImageDecoder = OPENCV,
) -> float:
    """Megapixels of decoding for these crops (boxes checked by `check_box_shape`; None: the whole
    picture). `detect`: the persons are still to be found in the whole picture, and the boxes
    found may need a second decode as fine as every pixel: counted at that most."""
    stored = header.width * header.height / 1e6
    at_most = coarsest_reduction(header, boxes, input_size, padding) if reduced else 1.0
    reduction = decoder.reduction(header, at_most if math.isfinite(at_most) else 1.0)
    cost = stored / reduction**2 + stored * STORED_PIXEL_SHARE
    if detect:
        cost += stored * (1 + STORED_PIXEL_SHARE)
    return cost
