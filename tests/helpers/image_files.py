"""Image files built by hand or with cv2.imencode, for the image tests and the hostile corpus
(no downloads, no Pillow): every format's variants, EXIF orientations, bombs, broken headers."""

import struct
import zlib

import cv2
import numpy as np

from dipr.benchmarks.photos import group_photo
from tests.helpers.jpeg_bytes import exif_app1, jpeg_segment
from tests.helpers.paths import PHOTOS


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


def random_bgr(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


def bomb(kind: str, width: int, height: int) -> bytes:
    """A small valid file whose header is patched to declare width × height."""
    data = bytearray(encoded(kind, smooth_bgr(8, 8)))
    if kind == "png":
        struct.pack_into(">II", data, 16, width, height)  # IHDR; its CRC is now wrong
    else:
        struct.pack_into(">HH", data, sof_offset(bytes(data)) + 5, height, width)
    return bytes(data)


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


def blobs(width: int, height: int, centres: list[tuple[float, float]], sigma: float) -> np.ndarray:
    """White Gaussian blobs on black, at sub-pixel centres (x, y) in pixel indices: uint8 gray."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in centres)
    return np.clip(255 * image, 0, 255).astype(np.uint8)


def gray_jpeg(gray: np.ndarray) -> bytes:
    return encode(".jpg", cv2.merge([gray] * 3), cv2.IMWRITE_JPEG_QUALITY, 98)


def blobs_jpeg(width: int, height: int, centres: list[tuple[float, float]], sigma: float) -> bytes:
    return gray_jpeg(blobs(width, height, centres, sigma))


def centroid(gray: np.ndarray, near: tuple[float, float], radius: float) -> tuple[float, float]:
    """The intensity-weighted centre (x, y) of the pixels within `radius` of `near`."""
    ys, xs = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    weights = gray.astype(np.float64) * (
        (abs(xs - near[0]) < radius) & (abs(ys - near[1]) < radius)
    )
    return float((weights * xs).sum() / weights.sum()), float((weights * ys).sum() / weights.sum())


def side_by_side(*photos: str) -> bytes:
    """A JPEG of fixture photos (tests/fixtures/photos, public domain) side by side, 480 px high:
    a picture with one person per photo."""
    return group_photo(PHOTOS, photos)
