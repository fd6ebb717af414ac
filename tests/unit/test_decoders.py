"""dipr.core.decoders: OpenCV for everything (JPEG at a reduced scale where allowed), or JPEGs by
nvImageCodec at full scale (its CPU backend here, for real) and the rest by OpenCV; and the
preparation of crops that follows from each decoder's scale."""

import numpy as np
import pytest

from dipr.core.decoders import OPENCV, WithJpegDecoder
from dipr.core.errors import UndecodableImage
from dipr.core.images import DecodedImage, ImageHeader, decode, read_header
from dipr.core.nvimgcodec_jpeg import NvimgcodecJpegDecoder
from dipr.core.prepare import decode_for_boxes, prepare_image, refine_for_boxes
from tests.helpers.image_files import blobs_jpeg, encoded, random_bgr, smooth_bgr

INPUT = (256, 256)
SMALL_BOX = [(100.0, 100.0, 300.0, 300.0)]  # 250 px padded: 256 input px, no reduction
WHOLE = [(0.0, 0.0, 2048.0, 1536.0)]  # at most 1/8 for a 256 input


class Counting:
    """The real nvImageCodec decoder, counting the JPEGs it is given."""

    def __init__(self, jpeg: NvimgcodecJpegDecoder) -> None:
        self.jpeg = jpeg
        self.calls = 0

    def decode(self, data: bytes, header: ImageHeader) -> DecodedImage:
        self.calls += 1
        return self.jpeg.decode(data, header)


class Refusing:
    """A JPEG decoder that refuses every JPEG, as nvJPEG refuses some valid ones (arithmetic
    coding): what comes back then must be OpenCV's answer."""

    def decode(self, data: bytes, header: ImageHeader) -> DecodedImage:
        raise UndecodableImage("corrupt or truncated JPEG data")


@pytest.fixture(scope="module")
def jpeg() -> NvimgcodecJpegDecoder:
    return NvimgcodecJpegDecoder("cpu")


def header_of(data: bytes) -> ImageHeader:
    return read_header(data, None, 10**8)


def test_opencv_reduces_jpeg_where_the_header_allows_and_nvimgcodec_never(jpeg):
    header = ImageHeader("jpeg", 4032, 3024)
    assert [OPENCV.reduction(header, f) for f in (1, 2, 7.9, 8, 100)] == [1, 2, 4, 8, 8]
    with_nvimgcodec = WithJpegDecoder(jpeg)
    assert [with_nvimgcodec.reduction(header, f) for f in (1, 2, 8, 100)] == [1, 1, 1, 1]
    assert with_nvimgcodec.reduction(ImageHeader("png", 4032, 3024), 8) == 1


def test_jpegs_go_to_nvimgcodec_and_the_other_formats_to_opencv(jpeg):
    counting = Counting(jpeg)
    decoder = WithJpegDecoder(counting)
    data = blobs_jpeg(640, 480, [(320, 240)], 30)
    decoded = decoder.decode(data, header_of(data), 8.0)  # asked for 1/8: full scale anyway
    assert (decoded.reduction, decoded.pixels.shape, counting.calls) == (1, (480, 640, 3), 1)
    for kind in ("png", "webp-lossless", "bmp"):
        other = encoded(kind, smooth_bgr(48, 64))
        pixels = decoder.decode(other, header_of(other), 8.0).pixels
        assert np.array_equal(pixels, decode(other, header_of(other)).pixels)
    assert counting.calls == 1


def test_a_jpeg_nvimgcodec_refuses_is_opencvs_to_decode_or_refuse():
    decoder = WithJpegDecoder(Refusing())
    data = encoded("jpeg", random_bgr(48, 64))
    header = header_of(data)
    assert np.array_equal(decoder.decode(data, header).pixels, decode(data, header).pixels)
    truncated = data[: len(data) // 2]
    with pytest.raises(UndecodableImage, match="corrupt or truncated JPEG data"):
        decoder.decode(truncated, header)


def test_with_nvimgcodec_every_crop_comes_from_every_pixel(jpeg):
    """What OpenCV gives with reduced decoding off, to the bit (the same libjpeg-turbo on the
    CPU): the same decode, the same warp."""
    decoder = WithJpegDecoder(jpeg)
    data = blobs_jpeg(2048, 1536, [(1024, 768), (200, 200)], 30)
    header = header_of(data)
    for boxes in (None, WHOLE, SMALL_BOX):
        assert decode_for_boxes(data, header, boxes, INPUT, decoder=decoder).reduction == 1
        full = prepare_image(data, None, boxes, INPUT, max_pixels=10**8, reduced=False)
        served = prepare_image(data, None, boxes, INPUT, max_pixels=10**8, decoder=decoder)
        assert np.array_equal(served.cropped.inputs, full.cropped.inputs)
    assert decode_for_boxes(data, header, None, INPUT).reduction == 8  # OpenCV's, for contrast


def test_boxes_found_after_a_full_scale_decode_need_no_second_one(jpeg):
    decoder = WithJpegDecoder(jpeg)
    data = blobs_jpeg(2048, 1536, [(1024, 768)], 30)
    header = header_of(data)
    whole = decode_for_boxes(data, header, None, INPUT, decoder=decoder)
    assert refine_for_boxes(data, header, whole, SMALL_BOX, INPUT, decoder=decoder) is whole
    # OpenCV's whole-picture decode (1/8) is too coarse for the small box: decoded again, finer.
    coarse = decode_for_boxes(data, header, None, INPUT)
    finer = refine_for_boxes(data, header, coarse, SMALL_BOX, INPUT)
    assert (coarse.reduction, finer.reduction) == (8, 1)
