"""Image bytes → RGB uint8 pixels, safely, at full or reduced scale.

Only JPEG, PNG, WebP and BMP are accepted, recognised by their magic bytes, so the other codecs
linked into OpenCV (TIFF, GIF, AVIF, JPEG 2000, ...) never see untrusted input. Each image's
declared size is read from its header by the small parsers below before any pixel is decoded: a
tiny file declaring 100000 × 100000 pixels (a decompression bomb) is refused without allocating.

Decoding is cv2.imdecode with IMREAD_COLOR, which applies the EXIF orientation and converts
grayscale, palette, 16-bit (high byte), RGBA (alpha dropped) and CMYK sources to 8-bit BGR.
A JPEG can also be decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's scaled IDCT,
IMREAD_REDUCED_COLOR_*): much cheaper, and exact when the factor divides both sides, in which case
decoded pixel r averages image pixels [f·r, f·r + f) (`DecodedImage.to_image`).
Truncation, as observed with OpenCV 5.0: a JPEG or PNG cut off mid-file decodes to None, which
becomes UndecodableImage; a JPEG whose scan ends early at an end-of-image marker decodes to the
full size with the missing rows grey, and is accepted (it cannot be told from a real picture).
OpenCV may log warnings about corrupt data to stderr; that is harmless.
"""

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from dipr.core.errors import LimitExceeded, UndecodableImage, UnsupportedImage

SUPPORTED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp")
# Not registered, but common: accepted as JPEG (the bytes decide the format anyway).
JPEG_ALIASES = ("image/jpg", "image/pjpeg")
# What to send instead: for a wrong declared type, the types to declare; for a wrong format, the
# formats (the client may well have declared application/octet-stream already).
_SUPPORTED = f"send one of {', '.join(SUPPORTED_MEDIA_TYPES)} (or application/octet-stream)"
_FORMATS = "send a JPEG, PNG, WebP or BMP image"

# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG, reserved) and CC (DAC) share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0..7.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
_HEIF_BRANDS = frozenset([b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"])


def sniff_format(data: bytes) -> str | None:
    """The format from the magic bytes: "jpeg", "png", "webp", "bmp", or None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def declared_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) from the header alone; UndecodableImage if it is truncated or garbled."""
    parsers = {"jpeg": _jpeg_size, "png": _png_size, "webp": _webp_size, "bmp": _bmp_size}
    if fmt not in parsers:
        raise ValueError(f"unknown image format {fmt!r}")
    if sniff_format(data) != fmt:
        raise UndecodableImage(f"the data is not a {fmt.upper()} file")
    return parsers[fmt](data)


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, checked before any pixel is decoded."""

    format: str  # "jpeg", "png", "webp" or "bmp"
    width: int  # as stored, before any EXIF orientation
    height: int

    def largest_reduction(self, at_most: float) -> int:
        """The largest of 1, 2, 4, 8 that is ≤ `at_most` and that the decoder can apply exactly.

        Only JPEG decodes at a reduced scale (libjpeg's scaled IDCT: cheaper than decoding every
        pixel), and only when the factor divides both sides: decoded pixel (i, j) then averages
        image pixels [f·i, f·i + f) exactly, whatever the EXIF orientation does to the axes.
        """
        if self.format != "jpeg":
            return 1
        for factor in (8, 4, 2):
            if factor <= at_most and self.width % factor == 0 and self.height % factor == 0:
                return factor
        return 1


def media_type(content_type: str | None) -> str:
    """A Content-Type value without its parameters, lower-case ("" for none)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_accepted_media_type(media: str) -> bool:
    """Whether a declared (normalised) media type may carry an image; "" and
    application/octet-stream declare nothing, the bytes decide."""
    return media in ("", "application/octet-stream", *SUPPORTED_MEDIA_TYPES, *JPEG_ALIASES)


def read_header(data: bytes, declared: str | None, max_pixels: int) -> ImageHeader:
    """Every check that needs no decoding: declared type, format, declared size, pixel limit.

    `declared` is the normalised media type the client gave (`media_type`), or None. It only
    gates: the bytes decide the format (clients mislabel freely).
    """
    if declared is not None and not is_accepted_media_type(declared):
        raise UnsupportedImage(f"content type {declared[:100]!r} is not supported; {_SUPPORTED}")
    if not data:
        raise UndecodableImage("the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        other = _other_format(data)
        if other is not None:
            raise UnsupportedImage(f"{other} images are not supported; {_FORMATS}")
        raise UndecodableImage("the data is not a JPEG, PNG, WebP or BMP image")
    width, height = declared_size(data, fmt)
    if width == 0 or height == 0:
        raise UndecodableImage(f"the {fmt.upper()} header declares an empty {width}x{height} image")
    if width * height > max_pixels:
        raise LimitExceeded(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if fmt == "png":
        _check_png_chunks(data)
    return ImageHeader(fmt, width, height)


@dataclass(frozen=True)
class DecodedImage:
    """The picture's RGB pixels, possibly decoded at 1/reduction of its size."""

    pixels: np.ndarray  # uint8 [height / reduction, width / reduction, 3], contiguous
    reduction: int  # 1: every pixel; 2, 4, 8: libjpeg's scaled decode

    @property
    def width(self) -> int:
        """The picture's width in image pixels (after EXIF orientation)."""
        return int(self.pixels.shape[1]) * self.reduction

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0]) * self.reduction

    @property
    def to_image(self) -> np.ndarray:
        """2×3 affine, decoded pixel index → image pixel index: decoded pixel r averages image
        pixels [f·r, f·r + f), whose centre is f·r + (f − 1)/2."""
        f = float(self.reduction)
        return np.array([[f, 0.0, (f - 1) / 2], [0.0, f, (f - 1) / 2]])


_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode(data: bytes, header: ImageHeader, at_most_reduction: float = 1.0) -> DecodedImage:
    """Decode to RGB at the coarsest exact reduction ≤ `at_most_reduction`
    (`header.largest_reduction`; 1, every pixel, for anything but a JPEG)."""
    fmt, width, height = header.format, header.width, header.height
    reduction = header.largest_reduction(at_most_reduction)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED_FLAGS[reduction])
    except cv2.error as error:  # e.g. OpenCV's own size limits
        raise UndecodableImage(f"the {fmt.upper()} decoder failed") from error
    if image is None:
        raise UndecodableImage(f"corrupt or truncated {fmt.upper()} data")
    if image.dtype == np.uint16:  # IMREAD_COLOR already gives 8 bits; guard other OpenCV versions
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UndecodableImage(
            f"unexpected decoded {fmt.upper()} image {image.dtype} {image.shape}"
        )
    # EXIF orientations 5..8 swap the axes, so either order matches the header.
    expected = (height // reduction, width // reduction)
    if image.shape[:2] not in (expected, expected[::-1]):
        raise UndecodableImage(
            f"the {fmt.upper()} header declares {width}x{height} but the data decodes to "
            f"{image.shape[1] * reduction}x{image.shape[0] * reduction}"
        )
    return DecodedImage(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), reduction)  # new, contiguous


def _other_format(data: bytes) -> str | None:
    """Name a recognisable image (or markup) format that is not supported, so the error says so."""
    if data.startswith(b"GIF8"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIC/HEIF"
        return f"ISO media ({brand.decode('latin-1')!r})"
    head = data[:4096].removeprefix(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"<"):
        return "SVG" if b"<svg" in head.lower() else "XML/HTML"
    return None


def _unpack(fmt: str, data: bytes, offset: int) -> tuple:
    try:
        return struct.unpack_from(fmt, data, offset)
    except struct.error as error:
        raise UndecodableImage("the image header is truncated") from error


def _png_size(data: bytes) -> tuple[int, int]:
    # The first chunk must be IHDR: length 13, then width and height (big-endian).
    length, kind, width, height = _unpack(">I4sII", data, 8)
    if kind != b"IHDR" or length != 13:
        raise UndecodableImage("PNG: the first chunk is not IHDR")
    return width, height


def _check_png_chunks(data: bytes) -> None:
    """OpenCV's PNG reader allocates what a chunk's length field declares before it reads the
    chunk: a 600-byte file declaring a 2 GB chunk would cost 2 GB. Refuse chunks past the end."""
    pos = 8  # after the signature
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > len(data) - pos - 12:  # 12: length, type and CRC fields
            raise UndecodableImage(f"PNG: the {kind!r} chunk at byte {pos} runs past the end")
        if kind == b"IEND":
            return
        pos += 12 + length


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2  # after SOI
    while True:
        if pos >= len(data) or data[pos] != 0xFF:
            raise UndecodableImage("JPEG: no frame header (expected a marker)")
        while pos < len(data) and data[pos] == 0xFF:  # any number of fill bytes
            pos += 1
        if pos >= len(data):
            raise UndecodableImage("JPEG: the header is truncated")
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA):  # stuffed byte, SOI, EOI, SOS: no frame header
            raise UndecodableImage(f"JPEG: marker 0x{marker:02X} before the frame header")
        (length,) = _unpack(">H", data, pos)
        if length < 2:
            raise UndecodableImage("JPEG: bad segment length")
        if marker in _JPEG_SOF:
            _precision, height, width = _unpack(">BHH", data, pos + 2)
            return width, height
        pos += length


def _webp_size(data: bytes) -> tuple[int, int]:
    (kind,) = _unpack("4s", data, 12)
    if kind == b"VP8 ":  # lossy: frame tag, start code, 14-bit sizes (top 2 bits are scaling)
        start, width, height = _unpack("<3x3sHH", data, 20)
        if start != b"\x9d\x01\x2a":
            raise UndecodableImage("WebP: bad VP8 start code")
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L":  # lossless: signature 0x2F, then 14-bit width-1 and height-1
        signature, bits = _unpack("<BI", data, 20)
        if signature != 0x2F:
            raise UndecodableImage("WebP: bad VP8L signature")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":  # extended: flags, reserved, 24-bit canvas width-1 and height-1
        width, height = _unpack("<4x3s3s", data, 20)
        return int.from_bytes(width, "little") + 1, int.from_bytes(height, "little") + 1
    raise UndecodableImage(f"WebP: unknown first chunk {kind!r}")


def _bmp_size(data: bytes) -> tuple[int, int]:
    (header_size,) = _unpack("<I", data, 14)
    if header_size == 12:  # BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = _unpack("<HH", data, 18)
        return width, height
    if header_size >= 40:  # BITMAPINFOHEADER and its successors: signed 32-bit sizes
        width, height = _unpack("<ii", data, 18)
        if width < 0:
            raise UndecodableImage("BMP: negative width")
        return width, abs(height)  # negative height means top-down rows
    raise UndecodableImage(f"BMP: unknown header size {header_size}")
