"""nvImageCodec's JPEG decoder, for real, on its CPU backend (libjpeg-turbo; no GPU here): the
same pixels as OpenCV's full-scale decode, the same refusals, safe from several threads; and on
"gpu" without a GPU, a clear refusal at construction.

The pixels are compared with the tolerance measured: the CPU backend matches OpenCV bit for bit
on every JPEG below (both are libjpeg-turbo 3.1, with the same integer IDCT and fancy chroma
upsampling) but the CMYK one, off by one grey level (mean 0.22: another rounding of CMYK to RGB).
nvJPEG on a GPU does not match so (its own IDCT and, by default, chroma replicated rather than
interpolated): its difference is to be measured on a GPU, and is not pinned here.
"""

import sys
import threading

import cv2
import numpy as np
import pytest

from dipr.core.errors import UndecodableImage
from dipr.core.images import ImageHeader, decode, read_header
from dipr.core.nvimgcodec_jpeg import JpegDecoderUnavailable, NvimgcodecJpegDecoder
from dipr.service.preflight import gpu_visible
from tests.helpers.image_files import (
    blobs,
    bomb,
    cmyk_jpeg,
    encode,
    encoded,
    exif_jpeg,
    gray_jpeg,
    random_bgr,
    smooth_bgr,
)
from tests.helpers.paths import PHOTOS

# Measured on every JPEG of `jpegs()`: max |nvImageCodec CPU − OpenCV| in grey levels, 0 but for
# the CMYK one.
CPU_TOLERANCE = {"cmyk": 1}


@pytest.fixture(scope="module")
def decoder() -> NvimgcodecJpegDecoder:
    return NvimgcodecJpegDecoder("cpu")


def jpegs() -> dict[str, bytes]:
    photos = {path.name: path.read_bytes() for path in sorted(PHOTOS.glob("*.jpg"))}
    noise = random_bgr(101, 77)  # odd sizes: partial MCUs at the right and bottom edges
    return {
        **photos,
        **{f"exif-{o}": exif_jpeg(o)[0] for o in range(1, 9)},
        "exif-6-little-endian": exif_jpeg(6, big_endian=False)[0],
        "gray-as-colour": gray_jpeg(blobs(64, 48, [(20.0, 20.0)], 5.0)),
        "gray-one-channel": encode(".jpg", cv2.cvtColor(smooth_bgr(40, 64), cv2.COLOR_BGR2GRAY)),
        "progressive": encode(".jpg", smooth_bgr(37, 53), cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "cmyk": cmyk_jpeg([(0, 0, 0, 0), (255, 0, 0, 0), (0, 255, 0, 128)]),
        "420-quality-50": encode(".jpg", noise, cv2.IMWRITE_JPEG_QUALITY, 50),
        "422": encode(
            ".jpg",
            noise,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
        ),
        "444": encode(
            ".jpg",
            noise,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
        ),
    }


JPEGS = jpegs()


def header_of(data: bytes) -> ImageHeader:
    return read_header(data, None, 10**8)


@pytest.mark.parametrize("name", list(JPEGS))
def test_the_pixels_are_opencvs_full_scale_decode(decoder, name):
    data = JPEGS[name]
    header = header_of(data)
    expected = decode(data, header).pixels
    decoded = decoder.decode(data, header)
    assert decoded.reduction == 1
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.flags.c_contiguous
    assert decoded.pixels.shape == expected.shape  # EXIF 5–8 swap the axes, in both
    difference = np.abs(decoded.pixels.astype(int) - expected.astype(int))
    assert difference.max() <= CPU_TOLERANCE.get(name, 0), (difference.max(), difference.mean())


def test_exif_orientation_6_turns_the_picture_clockwise(decoder):
    data, stored = exif_jpeg(6)
    decoded = decoder.decode(data, header_of(data))
    assert (decoded.width, decoded.height) == (40, 64)  # stored 64×40
    # The red marker of the stored top-left corner is now at the top right.
    assert (decoded.pixels[:6, -6:].mean(axis=(0, 1)) - (255, 0, 0) < 40).all()
    assert abs(decoded.pixels[:6, :6].astype(int) - stored[-6:, :6][::-1].swapaxes(0, 1)).max() < 40


@pytest.mark.parametrize("cut", ["header", "half", "last-12", "last-2"])
def test_a_truncated_jpeg_is_undecodable(decoder, cut):
    data = encoded("jpeg", random_bgr(64, 48))
    header = header_of(data)
    keep = {"header": 200, "half": len(data) // 2, "last-12": len(data) - 12}.get(
        cut, len(data) - 2
    )
    with pytest.raises(UndecodableImage, match="corrupt or truncated JPEG data"):
        decode(data[:keep], header)  # OpenCV refuses it …
    with pytest.raises(UndecodableImage, match="corrupt or truncated JPEG data"):
        decoder.decode(data[:keep], header)  # … and so does nvImageCodec, alike


def test_garbage_is_undecodable(decoder):
    data = encoded("jpeg", random_bgr(64, 48))
    sos = data.find(b"\xff\xda")
    garbage = data[:sos] + b"\xff\xda\x00\x02" + bytes(200)  # a scan header too short, then 0s
    with pytest.raises(UndecodableImage):
        decoder.decode(garbage, header_of(data))


def test_a_scan_ending_early_at_an_end_marker_is_accepted_as_opencv_accepts_it(decoder):
    data = encoded("jpeg", smooth_bgr(64, 48))
    cut = data[: int(len(data) * 0.8)] + b"\xff\xd9"
    header = header_of(cut)
    assert np.array_equal(decoder.decode(cut, header).pixels, decode(cut, header).pixels)


def test_a_size_other_than_the_headers_is_refused_in_either_orientation(decoder):
    data = JPEGS["astronaut.jpg"]  # 512×512
    with pytest.raises(UndecodableImage, match="declares 512x256 but the data decodes to 512x512"):
        decoder.decode(data, ImageHeader("jpeg", 512, 256))
    # EXIF 6: stored 64×40, decoded 40×64; the header (stored size) matches either way.
    rotated, _ = exif_jpeg(6)
    assert decoder.decode(rotated, ImageHeader("jpeg", 64, 40)).pixels.shape == (64, 40, 3)
    with pytest.raises(UndecodableImage, match="declares 64x64"):
        decoder.decode(rotated, ImageHeader("jpeg", 64, 64))
    # A header declaring more than the scan holds, as OpenCV takes it: grey below the scan.
    bomb_data = bomb("jpeg", 64, 64)
    header = header_of(bomb_data)
    assert np.array_equal(
        decoder.decode(bomb_data, header).pixels, decode(bomb_data, header).pixels
    )


def test_only_jpeg_is_decoded_here(decoder):
    png = encoded("png", smooth_bgr(8, 8))
    with pytest.raises(ValueError, match="only JPEG"):
        decoder.decode(png, header_of(png))


def test_threads_decoding_at_once_get_what_one_thread_gets(decoder):
    """One nvImageCodec decoder per thread: shared, two decodes at once failed (None)."""
    names = list(JPEGS)
    expected = {name: decoder.decode(JPEGS[name], header_of(JPEGS[name])).pixels for name in names}
    threads_count, rounds = 6, 4
    start = threading.Barrier(threads_count)
    mismatches: list[str] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            start.wait(10)
            for i in range(rounds * len(names)):
                name = names[(offset + i) % len(names)]
                pixels = decoder.decode(JPEGS[name], header_of(JPEGS[name])).pixels
                if not np.array_equal(pixels, expected[name]):
                    mismatches.append(name)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k * 3,)) for k in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and not mismatches, (errors, mismatches)


@pytest.mark.skipif(gpu_visible(), reason="this machine has a GPU: nvJPEG may well work")
def test_gpu_without_a_gpu_is_refused_at_construction():
    with pytest.raises(JpegDecoderUnavailable, match="cannot decode on GPU 0") as caught:
        NvimgcodecJpegDecoder("gpu", 0)
    assert "CUDA device 0" in str(caught.value) and "libnvjpeg.so.13" in str(caught.value)


def test_without_the_wheel_construction_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.nvimgcodec", None)  # as if not installed
    with pytest.raises(JpegDecoderUnavailable, match=r"pip install 'dipr\[gpu-decode\]'"):
        NvimgcodecJpegDecoder("cpu")


def test_a_device_is_gpu_or_cpu():
    with pytest.raises(ValueError, match="'gpu' or 'cpu'"):
        NvimgcodecJpegDecoder("cuda")  # type: ignore[arg-type]
