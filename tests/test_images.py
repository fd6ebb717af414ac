"""Image decoding: bytes → RGB uint8, with every test file generated here (no downloads, no Pillow).

JPEG/PNG/WebP/BMP come from cv2.imencode; palette PNGs, the CMYK JPEG, BITMAPCOREHEADER BMPs,
VP8X WebPs, EXIF segments, GIF/TIFF/HEIC/AVIF/SVG bytes and bomb headers are built by hand.
"""

import struct
import subprocess
import sys
import time
import tracemalloc
import zlib

import cv2
import numpy as np
import pytest
from jpeg_bytes import exif_app1, jpeg_segment

from dipr.service import images
from dipr.service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    UndecodableImage,
    UnsupportedMediaType,
)
from dipr.service.images import (
    SUPPORTED_MEDIA_TYPES,
    declared_size,
    decode_pixels,
    read_header,
    sniff_format,
)

MAX_PIXELS = 50_000_000

# ---------------------------------------------------------------------------------------------
# File builders


def decode_image(data: bytes, content_type: str | None, max_pixels: int) -> np.ndarray:
    """Check, then decode at full size: the service's path for one image."""
    return decode_pixels(data, read_header(data, content_type, max_pixels))


def encode(ext: str, bgr: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, bgr, list(params))
    assert ok
    return buf.tobytes()


# cv2.imencode argument lists for each format; WebP quality > 100 means lossless (VP8L).
ENCODINGS = {
    "jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY, 95),
    "png": (".png",),
    "webp-lossy": (".webp", cv2.IMWRITE_WEBP_QUALITY, 90),
    "webp-lossless": (".webp", cv2.IMWRITE_WEBP_QUALITY, 101),
    "bmp": (".bmp",),
}
LOSSY = {"jpeg", "webp-lossy"}


def encoded(kind: str, bgr: np.ndarray) -> bytes:
    ext, *params = ENCODINGS[kind]
    return encode(ext, bgr, *params)


def smooth_bgr(height: int, width: int) -> np.ndarray:
    """Gradients (easy for lossy codecs) with a distinct value in each channel."""
    y, x = np.mgrid[0:height, 0:width]
    bgr = np.empty((height, width, 3), np.uint8)
    bgr[..., 0] = 40 + 150 * x // max(width - 1, 1)
    bgr[..., 1] = 30 + 180 * y // max(height - 1, 1)
    bgr[..., 2] = 200
    return bgr


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def hand_png(
    width: int,
    height: int,
    bit_depth: int,
    color_type: int,
    rows: list[bytes],
    extra_chunks: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """A PNG written chunk by chunk; `rows` are the packed scanlines (filter byte 0 is added)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + b"".join(png_chunk(kind, payload) for kind, payload in extra_chunks)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def sof_offset(jpeg: bytes) -> int:
    """Where cv2's baseline SOF0 segment (length 17, 8-bit, 3 components) starts."""
    offset = jpeg.find(b"\xff\xc0\x00\x11\x08")
    assert offset > 0
    return offset


# Canonical Huffman codes (JPEG Annex C) for the standard luminance DC table.
DC_BITS = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
DC_VALUES = list(range(12))


def huffman_codes(bits: list[int], values: list[int]) -> dict[int, tuple[int, int]]:
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[values[k]] = (code, length)
            code += 1
            k += 1
        code <<= 1
    return codes


def cmyk_jpeg(blocks: list[tuple[int, int, int, int]]) -> bytes:
    """A baseline 4-component (CMYK, Adobe transform 0) JPEG, one flat 8×8 block per colour.

    OpenCV cannot write CMYK JPEGs (a 4-channel imencode writes YCbCr), so this one is encoded by
    hand: quantisation table of ones, so a flat block of sample v is just DC = 8 (v - 128) and an
    end-of-block. The AC table holds the single symbol EOB (code '0'). DHT precedes SOF here, so
    the header walker must skip C4 rather than mistake it for a frame header.
    """
    dc = huffman_codes(DC_BITS, DC_VALUES)
    bits: list[int] = []

    def put(value: int, length: int) -> None:
        bits.extend((value >> (length - 1 - i)) & 1 for i in range(length))

    predictor = [0, 0, 0, 0]
    for block in blocks:  # one MCU per block, components interleaved
        for component, sample in enumerate(block):
            coefficient = 8 * (sample - 128)
            diff, predictor[component] = coefficient - predictor[component], coefficient
            category = abs(diff).bit_length()
            put(*dc[category])
            if category:
                put(diff if diff > 0 else diff + (1 << category) - 1, category)
            put(0, 1)  # EOB
    bits.extend([1] * (-len(bits) % 8))
    scan = bytearray()
    for i in range(0, len(bits), 8):
        scan.append(int("".join(map(str, bits[i : i + 8])), 2))
        if scan[-1] == 0xFF:
            scan.append(0x00)  # byte stuffing
    components = range(1, 5)
    return (
        b"\xff\xd8"
        + jpeg_segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 0))
        + jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))
        + jpeg_segment(0xC4, b"\x00" + bytes(DC_BITS) + bytes(DC_VALUES))
        + jpeg_segment(0xC4, b"\x10" + bytes([1] + [0] * 15) + b"\x00")
        + jpeg_segment(
            0xC0,
            struct.pack(">BHHB", 8, 8, 8 * len(blocks), 4)
            + b"".join(bytes([c, 0x11, 0]) for c in components),
        )
        + jpeg_segment(
            0xDA, b"\x04" + b"".join(bytes([c, 0]) for c in components) + b"\x00\x3f\x00"
        )
        + bytes(scan)
        + b"\xff\xd9"
    )


def core_bmp(bgr: np.ndarray) -> bytes:
    """A 24-bit BMP with the old 12-byte BITMAPCOREHEADER (16-bit sizes), rows bottom-up."""
    height, width = bgr.shape[:2]
    pad = b"\x00" * (-width * 3 % 4)
    pixels = b"".join(bgr[y].tobytes() + pad for y in range(height - 1, -1, -1))
    return (
        b"BM"
        + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26)
        + struct.pack("<IHHHH", 12, width, height, 1, 24)
        + pixels
    )


def riff_webp(*chunks: bytes) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def vp8x_chunk(width: int, height: int, flags: int = 0) -> bytes:
    return (
        b"VP8X"
        + struct.pack("<I", 10)
        + bytes([flags, 0, 0, 0])
        + (width - 1).to_bytes(3, "little")
        + (height - 1).to_bytes(3, "little")
    )


def vp8x_webp(bgr: np.ndarray) -> bytes:
    """A lossy VP8 bitstream wrapped in the extended (VP8X) container."""
    height, width = bgr.shape[:2]
    simple = encoded("webp-lossy", bgr)
    assert simple[12:16] == b"VP8 "
    return riff_webp(vp8x_chunk(width, height), simple[12:])


def to_rgb(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., ::-1]


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---------------------------------------------------------------------------------------------
# Valid images


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


# EXIF orientation → how the stored pixels must be transformed for display.
ORIENTATIONS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),  # 90° clockwise
    7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
    8: lambda a: np.rot90(a, 1),  # 90° counter-clockwise
}


def exif_jpeg(orientation: int, big_endian: bool = True) -> tuple[bytes, np.ndarray]:
    bgr = smooth_bgr(40, 64)
    bgr[:8, :8] = (0, 0, 255)  # a red marker block in the top-left corner
    jpeg = encoded("jpeg", bgr)
    return jpeg[:2] + exif_app1(orientation, big_endian) + jpeg[2:], to_rgb(bgr)


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


# ---------------------------------------------------------------------------------------------
# Content types


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
    with pytest.raises(UnsupportedMediaType) as caught:
        decode_image(encoded("png", smooth_bgr(4, 5)), content_type, MAX_PIXELS)
    assert all(media_type in str(caught.value) for media_type in SUPPORTED_MEDIA_TYPES)


# ---------------------------------------------------------------------------------------------
# Not images, other images, broken images

GIF89A = (
    b"GIF89a"
    + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)
    + b"\x00\x00\x00\xff\xff\xff"
    + b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever: animated
    + b"\x21\xf9\x04\x04\x0a\x00\x00\x00"  # graphic control: 100 ms delay
    + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"  # frame 1
    + b"\x21\xf9\x04\x04\x0a\x00\x00\x00"
    + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x4c\x01\x00"  # frame 2
    + b"\x3b"
)
SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '
    b'width="10" height="10"><rect width="10" height="10" fill="red"/></svg>\n'
)


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
    with pytest.raises(UnsupportedMediaType, match=name):
        decode_image(data, content_type, MAX_PIXELS)


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


def random_bgr(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


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


# ---------------------------------------------------------------------------------------------
# Sizes: decompression bombs, zero sizes, header/data mismatch


def bomb(kind: str, width: int, height: int) -> bytes:
    """A small valid file whose header is patched to declare width × height."""
    data = bytearray(encoded(kind, smooth_bgr(8, 8)))
    if kind == "png":
        struct.pack_into(">II", data, 16, width, height)  # IHDR; its CRC is now wrong
    else:
        struct.pack_into(">HH", data, sof_offset(bytes(data)) + 5, height, width)
    return bytes(data)


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
    with pytest.raises(PayloadTooLarge, match=f"{side}x{side}"):
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
        with pytest.raises(PayloadTooLarge):
            decode_image(data, None, MAX_PIXELS)


def test_pixel_limit_boundary():
    data = encoded("png", smooth_bgr(40, 50))
    assert decode_image(data, None, 2000).shape == (40, 50, 3)
    with pytest.raises(PayloadTooLarge):
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


# ---------------------------------------------------------------------------------------------
# sniff_format and declared_size


def declared_cases() -> list[tuple[str, bytes, str, tuple[int, int]]]:
    bgr = smooth_bgr(37, 53)
    jpeg = encoded("jpeg", bgr)
    dqt = jpeg.find(b"\xff\xdb")
    # A COM segment holding the bytes of a fake SOF0 for 1×1: a byte search would find it.
    fake = jpeg_segment(0xFE, b"\xff\xc0\x00\x11\x08\x00\x01\x00\x01")
    bmp_top_down = bytearray(encoded("bmp", bgr))
    struct.pack_into("<i", bmp_top_down, 22, -37)
    return [
        ("png", encoded("png", bgr), "png", (53, 37)),
        ("png-16bit-gray", encode(".png", np.zeros((37, 53), np.uint16)), "png", (53, 37)),
        ("jpeg-baseline", jpeg, "jpeg", (53, 37)),
        (
            "jpeg-progressive",
            encode(".jpg", bgr, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
            "jpeg",
            (53, 37),
        ),
        (
            "jpeg-fill-bytes-and-tem",
            jpeg[:dqt] + b"\xff\x01\xff\xff\xff" + jpeg[dqt:],
            "jpeg",
            (53, 37),
        ),
        ("jpeg-fake-sof-in-comment", jpeg[:2] + fake + jpeg[2:], "jpeg", (53, 37)),
        ("jpeg-exif", exif_jpeg(6)[0], "jpeg", (64, 40)),
        ("jpeg-cmyk-dht-first", cmyk_jpeg([(0, 0, 0, 0)] * 3), "jpeg", (24, 8)),
        ("webp-vp8", encoded("webp-lossy", bgr), "webp", (53, 37)),
        ("webp-vp8l", encoded("webp-lossless", bgr), "webp", (53, 37)),
        ("webp-vp8x", vp8x_webp(bgr), "webp", (53, 37)),
        ("webp-vp8x-max", riff_webp(vp8x_chunk(1 << 24, 3)), "webp", (1 << 24, 3)),
        (
            "webp-vp8l-max",
            riff_webp(b"VP8L" + struct.pack("<IBI", 5, 0x2F, (1 << 28) - 1)),
            "webp",
            (16384, 16384),
        ),
        ("bmp", encoded("bmp", bgr), "bmp", (53, 37)),
        ("bmp-top-down", bytes(bmp_top_down), "bmp", (53, 37)),
        ("bmp-core", core_bmp(bgr), "bmp", (53, 37)),
    ]


DECLARED = declared_cases()
DECLARED_BY_NAME = {case[0]: case[1:] for case in DECLARED}


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


def patched(data: bytes, offset: int, replacement: bytes) -> bytes:
    return data[:offset] + replacement + data[offset + len(replacement) :]


def garbled_cases() -> list[tuple[str, bytes, str]]:
    bgr = smooth_bgr(8, 8)
    png, jpeg, bmp = encoded("png", bgr), encoded("jpeg", bgr), encoded("bmp", bgr)
    vp8, vp8l = encoded("webp-lossy", bgr), encoded("webp-lossless", bgr)
    sos = jpeg.find(b"\xff\xda")
    return [
        ("png-first-chunk-not-ihdr", patched(png, 12, b"IDAT"), "png"),
        ("png-ihdr-length", patched(png, 8, struct.pack(">I", 12)), "png"),
        ("jpeg-sos-before-sof", jpeg[:2] + jpeg[sos:], "jpeg"),
        ("jpeg-eoi-before-sof", b"\xff\xd8\xff\xd9" + jpeg[2:], "jpeg"),
        ("jpeg-garbage-between-segments", jpeg[:2] + b"\x00" + jpeg[2:], "jpeg"),
        ("jpeg-segment-length-1", b"\xff\xd8\xff\xe0\x00\x01" + jpeg[2:], "jpeg"),
        ("jpeg-segment-past-end", b"\xff\xd8\xff\xe0\xff\xf0" + jpeg[2:], "jpeg"),
        ("jpeg-only-fill-bytes", b"\xff\xd8" + b"\xff" * 100, "jpeg"),
        ("webp-unknown-chunk", patched(vp8, 12, b"VP9 "), "webp"),
        ("webp-vp8-start-code", patched(vp8, 23, b"\x00\x00\x00"), "webp"),
        ("webp-vp8l-signature", patched(vp8l, 20, b"\x2e"), "webp"),
        ("bmp-header-size-20", patched(bmp, 14, struct.pack("<I", 20)), "bmp"),
        ("bmp-negative-width", patched(bmp, 18, struct.pack("<i", -8)), "bmp"),
        ("png-declared-as-jpeg", png, "jpeg"),
        ("jpeg-declared-as-bmp", jpeg, "bmp"),
    ]


GARBLED = garbled_cases()


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


# ---------------------------------------------------------------------------------------------
# Errors and imports


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ServiceError, 500, "internal"),
        (UndecodableImage, 400, "undecodable_image"),
        (PayloadTooLarge, 413, "payload_too_large"),
        (UnsupportedMediaType, 415, "unsupported_media_type"),
        (InvalidRequest, 422, "invalid_request"),
        (Overloaded, 503, "overloaded"),
        (DeadlineExceeded, 504, "deadline_exceeded"),
        (InferenceFailed, 500, "inference_failed"),
        (NotReady, 503, "not_ready"),
    ],
)
def test_error_types(error, status, code):
    instance = error("something went wrong")
    assert isinstance(instance, ServiceError)
    assert (instance.status, instance.code) == (status, code)
    assert (error.status, error.code) == (status, code)
    assert str(instance) == instance.message == "something went wrong"


def test_overloaded_retry_after():
    assert Overloaded("busy").retry_after == 1
    assert Overloaded("busy", retry_after=7).retry_after == 7


def test_images_module_does_not_import_torch():
    code = "import sys, dipr.service.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_module_exports():
    assert images.SUPPORTED_MEDIA_TYPES == ("image/jpeg", "image/png", "image/webp", "image/bmp")
