"""The cost of decoding an image, from its header and boxes: the scale the decode will use, plus
the entropy-coded data read at any scale, plus the worst case of a detector's boxes."""

import pytest

from dipr.core.decode_cost import decode_cost_mp
from dipr.core.decoders import OPENCV, WithJpegDecoder
from dipr.core.images import ImageHeader, read_header
from dipr.core.nvimgcodec_jpeg import NvimgcodecJpegDecoder
from dipr.core.prepare import decode_for_boxes
from tests.helpers.image_files import blobs_jpeg

PHONE = ImageHeader("jpeg", 4032, 3024)  # 12.19 MP
SMALL_BOX = [(100.0, 100.0, 150.0, 150.0)]
LARGE_BOX = [(0.0, 0.0, 4032.0, 3024.0)]


def test_a_large_box_is_decoded_at_an_eighth_and_a_small_one_in_full():
    stored = 4032 * 3024 / 1e6
    large = decode_cost_mp(PHONE, LARGE_BOX, (256, 256))
    small = decode_cost_mp(PHONE, SMALL_BOX, (256, 256))
    assert large == pytest.approx(stored / 64 + stored / 8)
    assert small == pytest.approx(stored + stored / 8)


def test_without_reduced_decoding_or_for_other_formats_every_pixel_counts():
    stored = 4032 * 3024 / 1e6
    assert decode_cost_mp(PHONE, LARGE_BOX, (256, 256), reduced=False) == pytest.approx(
        stored * 1.125
    )
    png = ImageHeader("png", 4032, 3024)
    assert decode_cost_mp(png, LARGE_BOX, (256, 256)) == pytest.approx(stored * 1.125)


def test_detection_adds_the_most_a_second_decode_can_cost():
    stored = 4032 * 3024 / 1e6
    whole = decode_cost_mp(PHONE, None, (256, 256))
    assert whole == pytest.approx(stored / 64 + stored / 8)
    detect = decode_cost_mp(PHONE, None, (256, 256), detect=True)
    assert detect == pytest.approx(whole + stored * 1.125)


@pytest.mark.parametrize("decoder", ["opencv", "nvimgcodec"])
@pytest.mark.parametrize("boxes", [None, [(10.0, 10.0, 500.0, 500.0)], [(5.0, 5.0, 40.0, 40.0)]])
def test_the_cost_follows_the_scale_the_decode_chooses(boxes, decoder):
    # nvImageCodec (its CPU backend here) decodes JPEGs in full: counted so.
    chosen = OPENCV if decoder == "opencv" else WithJpegDecoder(NvimgcodecJpegDecoder("cpu"))
    data = blobs_jpeg(1024, 768, [(512, 384)], 40)
    header = read_header(data, None, 10**8)
    decoded = decode_for_boxes(data, header, boxes, (256, 256), decoder=chosen)
    expected = decoded.pixels.shape[0] * decoded.pixels.shape[1] / 1e6 + 1024 * 768 / 8e6
    assert decode_cost_mp(header, boxes, (256, 256), decoder=chosen) == pytest.approx(expected)


def test_a_full_scale_decoder_costs_every_pixel_and_a_detection_no_more():
    stored = 4032 * 3024 / 1e6
    full_scale = WithJpegDecoder(NvimgcodecJpegDecoder("cpu"))
    assert decode_cost_mp(PHONE, LARGE_BOX, (256, 256), decoder=full_scale) == pytest.approx(
        stored * 1.125
    )
    # A detection still adds a second decode in full, as for OpenCV's full-scale decodes (PNG,
    # reduced=False), though a decode in full is fine enough for any box: conservative.
    assert decode_cost_mp(
        PHONE, None, (256, 256), detect=True, decoder=full_scale
    ) == pytest.approx(stored * 1.125 * 2)
