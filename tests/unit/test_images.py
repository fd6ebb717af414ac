"""Image decoding: bytes → RGB uint8, with every test file generated here (no downloads, no Pillow).

JPEG/PNG/WebP/BMP come from cv2.imencode; palette PNGs, the CMYK JPEG, BITMAPCOREHEADER BMPs,
VP8X WebPs, EXIF segments, GIF/TIFF/HEIC/AVIF/SVG bytes and bomb headers are built by hand.
"""

import struct
import subprocess
import sys
import time
import tracemalloc

import cv2
import numpy as np
import pytest

from dipr.core import images
from dipr.core.errors import LimitExceeded, UndecodableImage, UnsupportedImage
from dipr.core.images import (
    SUPPORTED_MEDIA_TYPES,
    declared_size,
    decode,
    media_type,
    read_header,
    sniff_format,
)
from tests.helpers.image_files import (
    DECLARED,
    DECLARED_BY_NAME,
    ENCODINGS,
    GARBLED,
    GIF89A,
    LOSSY,
    ORIENTATIONS,
    SVG,
    bomb,
    cmyk_jpeg,
    core_bmp,
    encode,
    encoded,
    exif_jpeg,
    hand_png,
    random_bgr,
    riff_webp,
    smooth_bgr,
    sof_offset,
    to_rgb,
    vp8x_chunk,
    vp8x_webp,
)

MAX_PIXELS = 50_000_000


def decode_image(data: bytes, content_type: str | None, max_pixels: int) -> np.ndarray:
    """Check, then decode at full size: the service's path for one image (the Content-Type
    value normalised as the HTTP layer does)."""
    declared = None if content_type is None else media_type(content_type)
    return decode(data, read_header(data, declared, max_pixels)).pixels


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("kind", list(ENCODINGS))
def test_round_trip(kind):
    bgr = smooth_bgr(37, 53)  # odd sizes: no block alignment to hide behind
    data = encoded(kind, bgr)
    rgb = decode_image(data, None, MAX_PIXELS)
    assert rgb.shape == (37, 53, 3)
    assert rgb.dtype == np.uint8
    assert rgb.flags.c_contiguous
    assert mean_abs_diff(rgb, to_rgb(bgr)) < (3 if kind in LOSSY else 1e-9)


@pytest.mark.parametrize("kind", list(ENCODINGS))
def test_pure_red_comes_out_red(kind):
    bgr = np.zeros((16, 24, 3), np.uint8)
    bgr[...] = (0, 0, 255)  # red in OpenCV's BGR order
    rgb = decode_image(encoded(kind, bgr), "application/octet-stream", MAX_PIXELS)
    assert (rgb[..., 0] >= 240).all()
    assert (rgb[..., 1:] <= 15).all()


@pytest.mark.parametrize("kind", list(ENCODINGS))
def test_one_by_one(kind):
    bgr = np.array([[[10, 120, 230]]], np.uint8)
    rgb = decode_image(encoded(kind, bgr), None, MAX_PIXELS)
    assert rgb.shape == (1, 1, 3)
    assert np.abs(rgb.astype(int) - [230, 120, 10]).max() <= (8 if kind in LOSSY else 0)


def test_webp_vp8x_container():
    bgr = smooth_bgr(21, 34)
    rgb = decode_image(vp8x_webp(bgr), "image/webp", MAX_PIXELS)
    assert rgb.shape == (21, 34, 3)
    assert mean_abs_diff(rgb, to_rgb(bgr)) < 3


def test_webp_with_alpha_is_vp8x_and_drops_alpha():
    # Half transparent: at alpha 0 libwebp's encoder itself may rewrite the invisible colours.
    bgra = np.dstack([smooth_bgr(21, 34), np.full((21, 34), 128, np.uint8)])
    data = encode(".webp", bgra, cv2.IMWRITE_WEBP_QUALITY, 90)
    assert data[12:16] == b"VP8X"
    rgb = decode_image(data, None, MAX_PIXELS)
    assert rgb.shape == (21, 34, 3)
    assert mean_abs_diff(rgb, to_rgb(bgra[..., :3])) < 3  # colours kept, not composited


def test_grayscale_png():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    rgb = decode_image(encode(".png", gray), "image/png", MAX_PIXELS)
    assert rgb.shape == (3, 4, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_rgba_png_drops_alpha():
    bgra = np.zeros((5, 6, 4), np.uint8)
    bgra[..., :3] = (0, 0, 255)
    bgra[..., 3] = np.arange(30).reshape(5, 6) * 8  # including alpha 0: colour is kept as is
    rgb = decode_image(encode(".png", bgra), None, MAX_PIXELS)
    assert rgb.shape == (5, 6, 3)
    assert (rgb == [255, 0, 0]).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_is_scaled_to_8_bits(channels):
    rng = np.random.default_rng(16)
    shape = (7, 9) if channels == 1 else (7, 9, 3)
    deep = rng.integers(0, 65536, shape, dtype=np.uint16)
    deep.flat[:4] = [0, 255, 256, 65535]
    data = encode(".png", deep)
    assert data[24] == 16  # IHDR bit depth
    rgb = decode_image(data, None, MAX_PIXELS)
    assert rgb.dtype == np.uint8
    expected = (deep >> 8).astype(np.uint8)  # the high byte: 65535 → 255, 256 → 1, 255 → 0
    expected = np.repeat(expected[..., None], 3, 2) if channels == 1 else to_rgb(expected)
    np.testing.assert_array_equal(rgb, expected)


PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]


INDICES = np.array([[0, 1, 2, 3], [3, 2, 1, 0], [1, 1, 3, 3]], np.uint8)


@pytest.mark.parametrize("bit_depth", [8, 4])
@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png(bit_depth, transparency):
    if bit_depth == 8:
        rows = [row.tobytes() for row in INDICES]
    else:
        rows = [bytes((row[i] << 4) | row[i + 1] for i in range(0, len(row), 2)) for row in INDICES]
    chunks = [(b"PLTE", b"".join(bytes(color) for color in PALETTE))]
    if transparency:
        chunks.append((b"tRNS", bytes([0, 128, 255, 0])))
    data = hand_png(4, 3, bit_depth, 3, rows, tuple(chunks))
    assert data[25] == 3  # IHDR colour type: palette
    rgb = decode_image(data, "image/png", MAX_PIXELS)
    np.testing.assert_array_equal(rgb, np.array(PALETTE, np.uint8)[INDICES])


def test_cmyk_jpeg_is_converted_to_rgb():
    # Samples are stored the Adobe (Photoshop) way, inverted: 255 = no ink, 0 = full ink.
    # OpenCV reads them so: (C, M, Y, K) = (255, 0, 0, 255) is full magenta + yellow = red.
    blocks = [(255, 0, 0, 255), (0, 255, 255, 255), (255, 255, 255, 255), (255, 255, 255, 0)]
    data = cmyk_jpeg(blocks)
    assert declared_size(data, "jpeg") == (32, 8)
    rgb = decode_image(data, "image/jpeg", MAX_PIXELS)
    assert rgb.shape == (8, 32, 3)
    expected = [(255, 0, 0), (0, 255, 255), (255, 255, 255), (0, 0, 0)]  # red, cyan, white, black
    for i, color in enumerate(expected):
        block = rgb[:, 8 * i : 8 * i + 8].astype(int)
        assert np.abs(block - color).max() <= 2, (i, block[0, 0])


def test_exif_orientation_6_rotates_clockwise():
    data, _ = exif_jpeg(6)
    assert declared_size(data, "jpeg") == (64, 40)  # the header's (stored) size
    rgb = decode_image(data, "image/jpeg", MAX_PIXELS)
    assert rgb.shape == (64, 40, 3)  # width and height swapped
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)
    ys, xs = np.nonzero(red)
    # The 8×8 block in the top-left corner, turned 90° clockwise, lands in the top-right corner.
    assert abs(ys.mean() - 3.5) < 1
    assert abs(xs.mean() - 35.5) < 1


@pytest.mark.parametrize("big_endian", [True, False])
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_exif_orientations(orientation, big_endian):
    data, rgb_stored = exif_jpeg(orientation, big_endian)
    rgb = decode_image(data, None, MAX_PIXELS)
    expected = ORIENTATIONS[orientation](rgb_stored)
    assert rgb.shape == expected.shape
    assert rgb.flags.c_contiguous
    assert mean_abs_diff(rgb, expected) < 3


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/octet-stream",
        *SUPPORTED_MEDIA_TYPES,
        "image/PNG; charset=binary",
        "IMAGE/JPEG",
        "image/jpg",  # not registered, but common
        "image/pjpeg",
        "application/octet-stream; name=a.png",
        " image/webp ;q=1",
    ],
)
def test_content_type_accepted(content_type):
    # The type only gates; a PNG is decoded whatever supported type the client declared.
    rgb = decode_image(encoded("png", smooth_bgr(4, 5)), content_type, MAX_PIXELS)
    assert rgb.shape == (4, 5, 3)


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "image/gif",
        "image/tiff",
        "image/svg+xml",
        "image/heic",
        "image/avif",
        "multipart/form-data; boundary=x",
        "application/json",
        "image/pngx",
    ],
)
def test_content_type_rejected(content_type):
    with pytest.raises(UnsupportedImage) as caught:
        decode_image(encoded("png", smooth_bgr(4, 5)), content_type, MAX_PIXELS)
    assert all(media_type in str(caught.value) for media_type in SUPPORTED_MEDIA_TYPES)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (GIF89A, "GIF"),
        (b"GIF87a" + b"\x00" * 20, "GIF"),
        (SVG, "SVG"),
        (b"\xef\xbb\xbf  \n<svg viewBox='0 0 1 1'/>", "SVG"),
        (b"<!DOCTYPE html><html></html>", "XML/HTML"),
        (b"II*\x00\x08\x00\x00\x00" + b"\x00" * 16, "TIFF"),
        (b"MM\x00*\x00\x00\x00\x08" + b"\x00" * 16, "TIFF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "AVIF"),
    ],
    ids=[
        "gif89a-animated",
        "gif87a",
        "svg",
        "svg-bom",
        "html",
        "tiff-le",
        "tiff-be",
        "heic",
        "avif",
    ],
)
@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_other_image_formats_are_unsupported(data, name, content_type):
    assert sniff_format(data) is None
    with pytest.raises(UnsupportedImage, match=name):
        decode_image(data, content_type, MAX_PIXELS)


def test_an_unsupported_format_sent_as_octet_stream_is_told_the_formats_not_a_type():
    """The client already declared application/octet-stream: naming media types would not help."""
    with pytest.raises(UnsupportedImage) as refused:
        read_header(GIF89A, "application/octet-stream", MAX_PIXELS)
    assert (
        refused.value.message == "GIF images are not supported; send a JPEG, PNG, WebP or BMP image"
    )


def test_a_declared_type_that_cannot_be_an_image_names_the_types_to_declare():
    with pytest.raises(UnsupportedImage, match="'text/plain' is not supported; send one of image/"):
        read_header(b"\xff\xd8\xff", "text/plain", MAX_PIXELS)


def test_empty_body():
    with pytest.raises(UndecodableImage):
        decode_image(b"", "image/jpeg", MAX_PIXELS)


def test_random_bytes():
    data = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    assert sniff_format(data) is None
    with pytest.raises(UndecodableImage):
        decode_image(data, None, MAX_PIXELS)


@pytest.mark.parametrize("content_type", ["image/png", "image/jpeg"])
def test_text_with_an_image_content_type(content_type):
    with pytest.raises(UndecodableImage):
        decode_image(b"hello, this is not an image\n", content_type, MAX_PIXELS)


# Observed with OpenCV 5.0: a file cut off mid-file decodes to None (for a JPEG, even with only the
# end-of-image marker missing), so it is UndecodableImage; cuts inside the header fail earlier, in
# declared_size. A JPEG scan cut short but closed by an EOI marker is another matter: see
# test_jpeg_ending_early_is_accepted.
@pytest.mark.parametrize("kind", ["jpeg", "png"])
@pytest.mark.parametrize("cut", ["header", "half", "last-12", "last-2"])
def test_truncated(kind, cut):
    data = encoded(kind, random_bgr(64, 48))
    keep = {
        "header": 20,
        "half": len(data) // 2,
        "last-12": len(data) - 12,
        "last-2": len(data) - 2,
    }[cut]
    with pytest.raises(UndecodableImage):
        decode_image(data[:keep], None, MAX_PIXELS)


@pytest.mark.parametrize("kind", ["webp-lossy", "webp-lossless", "bmp"])
def test_truncated_other_formats(kind):
    data = encoded(kind, random_bgr(64, 48))
    with pytest.raises(UndecodableImage):
        decode_image(data[: len(data) // 2], None, MAX_PIXELS)


def test_jpeg_ending_early_is_accepted():
    # A scan cut short but closed by an end-of-image marker: libjpeg warns ("premature end of
    # data segment") and OpenCV returns the full-size image with the missing rows grey (128).
    # decode_image accepts it, as it cannot tell it from a real image with a flat bottom.
    bgr = smooth_bgr(64, 48)
    data = encoded("jpeg", bgr)
    cut = data[: int(len(data) * 0.8)] + b"\xff\xd9"
    rgb = decode_image(cut, None, MAX_PIXELS)
    assert rgb.shape == (64, 48, 3)
    assert mean_abs_diff(rgb[:16], to_rgb(bgr)[:16]) < 3
    assert (rgb[-8:] == 128).all()
    # Likewise a header declaring more pixels than the scan holds (within the pixel limit).
    assert decode_image(bomb("jpeg", 640, 640), None, MAX_PIXELS).shape == (640, 640, 3)


# JPEG sizes are 16-bit: 65535 × 65535 is the largest a JPEG can declare.
@pytest.mark.parametrize(("kind", "side"), [("png", 100_000), ("jpeg", 65_535)])
def test_decompression_bomb_is_refused_before_decoding(kind, side, monkeypatch):
    data = bomb(kind, side, side)
    assert declared_size(data, kind) == (side, side)

    def no_decode(*args, **kwargs):
        raise AssertionError("cv2.imdecode must not be called")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(LimitExceeded, match=f"{side}x{side}"):
        decode_image(data, None, MAX_PIXELS)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.1
    assert peak < 1_000_000  # bytes: nothing image-sized was allocated


def test_webp_and_bmp_bombs():
    bmp = bytearray(encoded("bmp", smooth_bgr(8, 8)))
    struct.pack_into("<ii", bmp, 18, 60_000, -60_000)
    vp8x = riff_webp(vp8x_chunk(1 << 24, 1 << 24))  # the largest canvas, header only
    vp8l = riff_webp(b"VP8L" + struct.pack("<IBI", 5, 0x2F, (1 << 28) - 1))  # 16384 × 16384
    for data in (bytes(bmp), vp8x, vp8l):
        with pytest.raises(LimitExceeded):
            decode_image(data, None, MAX_PIXELS)


def test_pixel_limit_boundary():
    data = encoded("png", smooth_bgr(40, 50))
    assert decode_image(data, None, 2000).shape == (40, 50, 3)
    with pytest.raises(LimitExceeded):
        decode_image(data, None, 1999)


@pytest.mark.parametrize(
    ("kind", "width", "height"),
    [
        ("png", 0, 8),
        ("png", 8, 0),
        ("jpeg", 0, 8),
        ("jpeg", 8, 0),
    ],
)
def test_zero_size_header(kind, width, height):
    with pytest.raises(UndecodableImage):
        decode_image(bomb(kind, width, height), None, MAX_PIXELS)


def test_decoded_size_must_match_header(monkeypatch):
    data = encoded("png", smooth_bgr(10, 20))
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.zeros((10, 19, 3), np.uint8))
    with pytest.raises(UndecodableImage, match="20x10"):
        decode_image(data, None, MAX_PIXELS)


def test_png_header_larger_than_the_data():
    with pytest.raises(UndecodableImage):  # libpng: IHDR CRC error
        decode_image(bomb("png", 64, 64), None, MAX_PIXELS)


def test_opencv_exception_becomes_undecodable(monkeypatch):
    def failing(buf, flags):
        raise cv2.error("simulated")

    monkeypatch.setattr(cv2, "imdecode", failing)
    with pytest.raises(UndecodableImage):
        decode_image(encoded("png", smooth_bgr(4, 4)), None, MAX_PIXELS)


@pytest.mark.parametrize(
    ("data", "fmt", "size"), [case[1:] for case in DECLARED], ids=[case[0] for case in DECLARED]
)
def test_declared_size(data, fmt, size):
    assert sniff_format(data) == fmt
    assert declared_size(data, fmt) == size
    if max(size) <= 1000:  # the real files: the decoder agrees with the header
        rgb = decode_image(data, None, MAX_PIXELS)
        assert rgb.shape[:2] in (size[::-1], size)


def test_bmp_variants_decode():
    bgr = smooth_bgr(5, 7)
    bgr[0, 0] = (0, 0, 255)
    np.testing.assert_array_equal(decode_image(core_bmp(bgr), None, MAX_PIXELS), to_rgb(bgr))
    top_down = bytearray(encoded("bmp", bgr))
    struct.pack_into("<i", top_down, 22, -5)  # the bottom-up rows now read top-down: flipped
    np.testing.assert_array_equal(
        decode_image(bytes(top_down), None, MAX_PIXELS), to_rgb(bgr)[::-1]
    )


def header_end(fmt: str, data: bytes) -> int:
    """How many leading bytes declared_size needs."""
    if fmt == "png":
        return 24  # signature, IHDR length and type, width, height
    if fmt == "webp":
        return {b"VP8 ": 30, b"VP8L": 25, b"VP8X": 30}[data[12:16]]
    if fmt == "bmp":
        return 22 if data[14] == 12 else 26
    return sof_offset(data) + 9  # marker, length, precision, height, width


TRUNCATABLE = [
    "png",
    "png-16bit-gray",
    "jpeg-baseline",
    "jpeg-exif",
    "webp-vp8",
    "webp-vp8l",
    "webp-vp8x",
    "bmp",
    "bmp-core",
]


@pytest.mark.parametrize(
    ("data", "fmt"), [DECLARED_BY_NAME[name][:2] for name in TRUNCATABLE], ids=TRUNCATABLE
)
def test_truncated_headers(data, fmt):
    end = header_end(fmt, data)
    assert declared_size(data[:end], fmt) == declared_size(data, fmt)  # the header is enough
    for keep in range(end):
        with pytest.raises(UndecodableImage):
            declared_size(data[:keep], fmt)


@pytest.mark.parametrize(
    ("data", "fmt"), [case[1:] for case in GARBLED], ids=[case[0] for case in GARBLED]
)
def test_garbled_headers(data, fmt):
    with pytest.raises(UndecodableImage):
        declared_size(data, fmt)
    if sniff_format(data) in (fmt, None):  # not the valid files passed with the wrong format
        with pytest.raises(UndecodableImage):
            decode_image(data, None, MAX_PIXELS)


def test_declared_size_unknown_format():
    with pytest.raises(ValueError, match="gif"):
        declared_size(GIF89A, "gif")


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"\xff\xd8\xff\xe0", "jpeg"),
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"RIFF\0\0\0\0WEBPVP8 ", "webp"),
        (b"BM", "bmp"),
        (b"\xff\xd8", None),
        (b"\x89PNG", None),
        (b"RIFF\0\0\0\0WAVE", None),
        (b"", None),
        (GIF89A, None),
    ],
)
def test_sniff_format(data, fmt):
    assert sniff_format(data) == fmt


def test_images_module_does_not_import_torch():
    code = "import sys, dipr.core.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_exports():
    assert images.SUPPORTED_MEDIA_TYPES == ("image/jpeg", "image/png", "image/webp", "image/bmp")
