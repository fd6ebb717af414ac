"""A corpus of hostile inputs, over real HTTP to `dipr serve` running as a child process.

Every input is made here (numpy, cv2, zlib, struct; the hand-made files of test_images.py), and
each gets its documented status with a JSON error body: 400 undecodable image or malformed body,
413 too many bytes, pixels, images or boxes, 415 unsupported type, 422 bad boxes; odd but valid
images get 200. After every input a valid request must still succeed, and the server's memory
must stay bounded: its peak resident memory while it handles each input (VmHWM of the process,
reset before each one) and its resident memory at the end. Besides the hand-picked inputs, 200
randomly mutated small JPEG/PNG/WebP/BMP files (seeded) must each get 200, 400 or 413.

The figures (inputs tried, 5xx answers, memory) are printed as one line (pytest -s) and written
to hostile-summary.json in pytest's base temporary directory.

test_service.py has the API's individual error paths; this file is the systematic sweep.
"""

import json
import random
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cv2
import httpx
import numpy as np
import pytest

from tests.helpers.image_files import (
    DECLARED,
    GARBLED,
    GIF89A,
    SVG,
    bomb,
    cmyk_jpeg,
    core_bmp,
    encode,
    encoded,
    exif_jpeg,
    hand_png,
    png_chunk,
    riff_webp,
    smooth_bgr,
    vp8x_chunk,
)
from tests.helpers.paths import PHOTOS
from tests.helpers.service_process import ServiceProcess, service_process

MAX_BYTES = 2_000_000
MAX_PIXELS = 4_000_000
MAX_IMAGES = 4
MAX_BOXES = 8
# Memory bounds, over the server's resident memory after warm-up. While one request is handled
# (its peak, VmHWM): the largest image allowed (4 Mpx) decodes to 12 MB of RGB (24 MB at 16 bits),
# and a bomb that got decoded would take GBs. After the whole sweep: what allocators keep cached.
PEAK_GROWTH_LIMIT_KIB = 200 * 1024
END_GROWTH_LIMIT_KIB = 100 * 1024

ERROR_CODES = {
    400: {"undecodable_image", "malformed_request"},
    413: {"payload_too_large"},
    415: {"unsupported_media_type"},
    422: {"invalid_request"},
}


# ---------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True)
class Hostile:
    """One request and the answer it must get."""

    name: str
    status: int
    code: str | None = None  # the error code; None for 200
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    route: str = "/pose"
    check: Callable[[dict], None] | None = None  # more checks of a 200's JSON


def rgb_png(height: int, width: int) -> bytes:
    return encoded("png", smooth_bgr(height, width))


def person_png(side: int) -> bytes:
    """The astronaut fixture photo (one person) scaled to side × side, as PNG."""
    bgr = cv2.imread(str(PHOTOS / "astronaut.jpg"), cv2.IMREAD_COLOR)
    return encode(".png", cv2.resize(bgr, (side, side), interpolation=cv2.INTER_AREA))


# The valid request sent after every hostile one: a person for the detector to find.
PROBE = person_png(64)


def image_part(data: bytes, content_type: str = "image/png", name: str = "x") -> tuple:
    return ("image", (name, data, content_type))


def upload(
    name: str,
    data: bytes,
    status: int,
    code: str | None = None,
    content_type: str = "application/octet-stream",
    **kwargs: object,
) -> Hostile:
    """One file in the multipart field `image`, with a whole-image crop."""
    return Hostile(name, status, code, files=[image_part(data, content_type)], **kwargs)  # type: ignore[arg-type]


def raw(name: str, data: bytes, content_type: str, status: int, code: str | None = None) -> Hostile:
    return Hostile(name, status, code, content=data, headers={"content-type": content_type})


def with_boxes(name: str, boxes: str, status: int, code: str | None = None, **kwargs) -> Hostile:
    """The valid 64×64 PNG of a person with this text in the `boxes` field."""
    return Hostile(name, status, code, files=[image_part(PROBE)], data={"boxes": boxes}, **kwargs)


def image_size(width: int, height: int) -> Callable[[dict], None]:
    def check(body: dict) -> None:
        assert [r["image"] for r in body["results"]] == [{"width": width, "height": height}]

    return check


def persons(*counts: int) -> Callable[[dict], None]:
    def check(body: dict) -> None:
        assert [len(r["persons"]) for r in body["results"]] == list(counts)

    return check


def noise_png(height: int, width: int, seed: int = 0) -> bytes:
    """Random pixels: PNG cannot compress them, so the file is about 3 bytes per pixel."""
    rng = np.random.default_rng(seed)
    return encode(".png", rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def zlib_bomb_png(width: int, height: int) -> bytes:
    """A real, valid PNG of black pixels: a few KB of deflate inflating to width×height×3 bytes."""
    row = b"\x00" + bytes(3 * width)  # filter byte, then black RGB
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def bmp_bomb(width: int, height: int) -> bytes:
    data = bytearray(encoded("bmp", smooth_bgr(8, 8)))
    struct.pack_into("<ii", data, 18, width, height)  # BITMAPINFOHEADER size fields
    return bytes(data)


def png_chunk_length(png: bytes, length: int) -> bytes:
    """The PNG with the length field of its second chunk (after IHDR) set to `length`."""
    data = bytearray(png)
    struct.pack_into(">I", data, 33, length)
    return bytes(data)


def multipart(boundary: bytes, *parts: tuple[bytes, bytes]) -> bytes:
    """A hand-written multipart body: (part headers, part content) pairs."""
    body = b"".join(
        b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n"
        for head, content in parts
    )
    return body + b"--" + boundary + b"--\r\n"


def image_cases() -> list[Hostile]:
    bgr = smooth_bgr(37, 53)
    jpeg, png = encoded("jpeg", bgr), encoded("png", bgr)
    sof = jpeg.find(b"\xff\xc0")
    gray = bgr[..., 1].copy()
    rgba = np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)])
    exif, _ = exif_jpeg(6)  # stored 64×40, displayed 40×64
    palette_rows = [bytes([(x + y) % 4 for x in range(53)]) for y in range(37)]
    palette = hand_png(
        53,
        37,
        8,
        3,
        palette_rows,
        ((b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])), (b"tRNS", b"\x00\x80")),
    )
    gray_alpha = hand_png(4, 3, 8, 4, [bytes(range(8))] * 3)
    one_bit = hand_png(9, 2, 1, 0, [b"\xaa\x80", b"\x55\x00"])
    rng = np.random.default_rng(7)
    cases = [
        # Not images at all.
        upload("empty", b"", 400, "undecodable_image"),
        upload("random-4kb", b"\x00" + rng.bytes(4095), 400, "undecodable_image"),
        upload("random-1.5mb", b"\x00" + rng.bytes(1_500_000), 400, "undecodable_image"),
        upload(
            "text-as-jpeg", b"I am not a picture.\n" * 20, 400, "undecodable_image", "image/jpeg"
        ),
        upload(
            "pdf-as-png",
            b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF\n",
            400,
            "undecodable_image",
            "image/png",
        ),
        upload(
            "html-as-png", b"<!doctype html><p>hi</p>", 415, "unsupported_media_type", "image/png"
        ),
        upload("magic-bytes-only-jpeg", b"\xff\xd8\xff", 400, "undecodable_image", "image/jpeg"),
        upload("magic-bytes-only-png", b"\x89PNG\r\n\x1a\n", 400, "undecodable_image", "image/png"),
        # Truncated.
        upload("jpeg-cut-in-half", jpeg[: len(jpeg) // 2], 400, "undecodable_image", "image/jpeg"),
        upload("jpeg-cut-after-frame-header", jpeg[: sof + 19], 400, "undecodable_image"),
        upload("jpeg-without-end-marker", jpeg[:-2], 400, "undecodable_image"),
        upload("png-cut-in-half", png[: len(png) // 2], 400, "undecodable_image", "image/png"),
        upload("png-cut-after-ihdr", png[:33], 400, "undecodable_image"),
        upload("png-without-iend", png[:-12], 400, "undecodable_image"),
        # Decompression bombs: refused from the header, before any pixel is decoded.
        upload("png-header-100000x100000", bomb("png", 100_000, 100_000), 413, "payload_too_large"),
        upload(
            "png-header-4294967295-square",
            bomb("png", 2**32 - 1, 2**32 - 1),
            413,
            "payload_too_large",
        ),
        upload("jpeg-header-65535x65535", bomb("jpeg", 65_535, 65_535), 413, "payload_too_large"),
        upload("jpeg-header-4001x1000", bomb("jpeg", 4001, 1000), 413, "payload_too_large"),
        upload(
            "webp-header-16777216x3", riff_webp(vp8x_chunk(1 << 24, 3)), 413, "payload_too_large"
        ),
        upload("bmp-header-100000x100000", bmp_bomb(100_000, 100_000), 413, "payload_too_large"),
        upload("bmp-header-top-down-huge", bmp_bomb(50_000, -(2**31)), 413, "payload_too_large"),
        # A real deflate bomb: 27 MB of pixels in a few KB, over the pixel limit...
        upload("png-deflate-bomb-3000x3000", zlib_bomb_png(3000, 3000), 413, "payload_too_large"),
        # ... and one just under it, which is a valid (black) picture.
        upload(
            "png-deflate-1990x2000", zlib_bomb_png(1990, 2000), 200, check=image_size(1990, 2000)
        ),
        # A chunk that declares 2 GB in a 600-byte file: OpenCV's PNG reader allocates what a
        # chunk declares before it reads it (found by the mutants below; a service bug when found).
        upload(
            "png-chunk-declaring-2gb", png_chunk_length(png, 2**31 - 1), 400, "undecodable_image"
        ),
        # A header that promises more than the data holds, within the pixel limit.
        upload("png-header-1000x1000-data-8x8", bomb("png", 1000, 1000), 400, "undecodable_image"),
        # Odd but valid: converted to 8-bit RGB and served.
        upload(
            "png-16bit-rgb",
            encode(".png", (bgr.astype(np.uint16) * 257)),
            200,
            check=image_size(53, 37),
        ),
        upload(
            "png-16bit-gray",
            encode(".png", gray.astype(np.uint16) * 257),
            200,
            check=image_size(53, 37),
        ),
        upload("png-palette-with-transparency", palette, 200, check=image_size(53, 37)),
        upload("png-gray", encode(".png", gray), 200, check=image_size(53, 37)),
        upload("png-gray-alpha", gray_alpha, 200, check=image_size(4, 3)),
        upload("png-1-bit", one_bit, 200, check=image_size(9, 2)),
        upload("png-rgba", encode(".png", rgba), 200, check=image_size(53, 37)),
        upload("jpeg-gray", encode(".jpg", gray), 200, check=image_size(53, 37)),
        upload(
            "jpeg-cmyk",
            cmyk_jpeg([(255, 0, 0, 255), (0, 255, 255, 255)]),
            200,
            check=image_size(16, 8),
        ),
        upload("jpeg-exif-rotated", exif, 200, None, "image/jpeg", check=image_size(40, 64)),
        upload("png-1x1", rgb_png(1, 1), 200, check=image_size(1, 1)),
        upload("jpeg-1x1", encoded("jpeg", smooth_bgr(1, 1)), 200, check=image_size(1, 1)),
        upload("webp-1x1", encoded("webp-lossless", smooth_bgr(1, 1)), 200, check=image_size(1, 1)),
        upload("bmp-1x1", core_bmp(smooth_bgr(1, 1)), 200, check=image_size(1, 1)),
        upload("png-1x20000-line", rgb_png(1, 20_000), 200, check=image_size(20_000, 1)),
        upload("png-20000x1-column", rgb_png(20_000, 1), 200, check=image_size(1, 20_000)),
        # Mislabelled: the bytes decide, the declared type only gates.
        upload("bmp-labelled-jpeg", encoded("bmp", bgr), 200, None, "image/jpeg"),
        raw("raw-png-labelled-webp", png, "image/webp", 200),
        # Other formats: 415.
        upload("gif-animated", GIF89A, 415, "unsupported_media_type", "image/gif"),
        upload("gif-animated-labelled-png", GIF89A, 415, "unsupported_media_type", "image/png"),
        upload("svg", SVG, 415, "unsupported_media_type", "image/svg+xml"),
        upload("svg-labelled-png", SVG, 415, "unsupported_media_type", "image/png"),
        upload("tiff", b"II*\x00\x08\x00\x00\x00" + bytes(16), 415, "unsupported_media_type"),
        upload("png-part-typed-text", png, 415, "unsupported_media_type", "text/plain"),
        raw("raw-json-body", b'{"image": "x"}', "application/json", 415, "unsupported_media_type"),
        # Sizes of the request: bytes, image count.
        upload("png-over-the-byte-limit", noise_png(600, 1200), 413, "payload_too_large"),
        raw(
            "raw-png-over-the-byte-limit",
            noise_png(600, 1200, 1),
            "image/png",
            413,
            "payload_too_large",
        ),
        Hostile(
            "images-at-the-limit",
            200,
            files=[image_part(rgb_png(8 + i, 8)) for i in range(MAX_IMAGES)],
            check=persons(*[0] * MAX_IMAGES),  # colour gradients: nobody in them
        ),
        Hostile(
            "one-image-too-many",
            413,
            "payload_too_large",
            files=[image_part(rgb_png(1, 1))] * (MAX_IMAGES + 1),
        ),
        Hostile(
            "1000-tiny-images", 413, "payload_too_large", files=[image_part(rgb_png(1, 1))] * 1000
        ),
        Hostile(
            "100-text-fields",
            400,
            "malformed_request",
            files=[image_part(PROBE)],
            data={f"field{i}": "x" for i in range(100)},
        ),
        # Broken multipart.
        raw(
            "multipart-without-boundary",
            b"garbage",
            "multipart/form-data",
            400,
            "malformed_request",
        ),
        raw(
            "multipart-garbage",
            b"garbage" * 100,
            "multipart/form-data; boundary=xyz",
            400,
            "malformed_request",
        ),
        raw(
            "multipart-part-without-name",
            multipart(b"xyz", (b"Content-Disposition: form-data", PROBE)),
            "multipart/form-data; boundary=xyz",
            400,
            "malformed_request",
        ),
        # The parser drops a part that never ends; the form then holds no image.
        raw(
            "multipart-unterminated",
            b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n'
            + PROBE[:100],
            "multipart/form-data; boundary=xyz",
            422,
            "invalid_request",
        ),
        # /pose/render takes one image.
        Hostile(
            "render-two-images",
            413,
            "payload_too_large",
            files=[image_part(PROBE), image_part(PROBE)],
            route="/pose/render",
        ),
        upload("render-gif", GIF89A, 415, "unsupported_media_type", route="/pose/render"),
        upload("render-1x1", rgb_png(1, 1), 200, route="/pose/render"),
        upload("render-16bit", encode(".png", gray.astype(np.uint16)), 200, route="/pose/render"),
    ]
    # Every kind of real file test_images.py makes: served, or refused as a bomb.
    for name, data, _fmt, (width, height) in DECLARED:
        if width * height > MAX_PIXELS:
            cases.append(upload(f"declared-{name}", data, 413, "payload_too_large"))
        else:
            cases.append(upload(f"declared-{name}", data, 200))
    # And its garbled headers (not the valid files it passes under the wrong format).
    for name, data, _fmt in GARBLED:
        if "-declared-as-" not in name:
            cases.append(upload(f"garbled-{name}", data, 400, "undecodable_image"))
    return cases


def box_cases() -> list[Hostile]:
    deep = 100_000
    return [
        with_boxes("box-nan", "[[[0, 0, NaN, 10]]]", 422, "invalid_request"),
        with_boxes("box-minus-infinity", "[[[-Infinity, 0, 10, 10]]]", 422, "invalid_request"),
        with_boxes("box-overflowing-float", "[[[0, 0, 1e999, 10]]]", 422, "invalid_request"),
        with_boxes("box-strings", '[[["0", "0", "10", "10"]]]', 422, "invalid_request"),
        with_boxes("box-null-coordinate", "[[[0, null, 10, 10]]]", 422, "invalid_request"),
        with_boxes(
            "box-object", '[[{"x1": 0, "y1": 0, "x2": 10, "y2": 10}]]', 422, "invalid_request"
        ),
        with_boxes("box-five-numbers", "[[[0, 0, 10, 10, 1]]]", 422, "invalid_request"),
        with_boxes("box-zero-width", "[[[5, 0, 5, 10]]]", 422, "invalid_request"),
        with_boxes("box-negative-height", "[[[0, 10, 10, 0]]]", 422, "invalid_request"),
        with_boxes("box-right-of-the-image", "[[[64, 0, 100, 10]]]", 422, "invalid_request"),
        with_boxes("box-above-the-image", "[[[0, -50, 10, 0]]]", 422, "invalid_request"),
        with_boxes(
            "boxes-one-too-many",
            json.dumps([[[0, 0, 10, 10]] * (MAX_BOXES + 1)]),
            413,
            "payload_too_large",
        ),
        with_boxes(
            "boxes-10000", json.dumps([[[0, 0, 10, 10]] * 10_000]), 413, "payload_too_large"
        ),
        with_boxes("boxes-flat", "[0, 0, 10, 10]", 422, "invalid_request"),
        with_boxes("boxes-one-level-too-deep", "[[[[0, 0, 10, 10]]]]", 422, "invalid_request"),
        with_boxes("boxes-a-string", '"[[[0, 0, 10, 10]]]"', 422, "invalid_request"),
        with_boxes("boxes-two-lists-for-one-image", "[[], []]", 422, "invalid_request"),
        with_boxes("boxes-no-list-for-one-image", "[]", 422, "invalid_request"),
        with_boxes("boxes-not-json", "[[[0, 0, 10, 10]]", 422, "invalid_request"),
        with_boxes(
            "boxes-at-the-limit",
            json.dumps([[[0, 0, 10 + i, 10] for i in range(MAX_BOXES)]]),
            200,
            check=persons(MAX_BOXES),
        ),
        with_boxes("boxes-empty-means-find-the-persons", "  ", 200, check=persons(1)),
        Hostile(
            "boxes-as-a-file-part",
            200,
            files=[
                image_part(PROBE),
                ("boxes", ("b.json", b"[[[0, 0, 30, 40]]]", "application/json")),
            ],
            check=persons(1),
        ),
        Hostile(
            "boxes-invalid-utf8",
            422,
            "invalid_request",
            files=[
                image_part(PROBE),
                ("boxes", ("b.json", b"\xff\xfe[[[0, 0, 1, 1]]]", "text/plain")),
            ],
        ),
        Hostile(
            "boxes-for-three-images-two-given",
            422,
            "invalid_request",
            files=[image_part(PROBE)] * 3,
            data={"boxes": "[[], []]"},
        ),
        # Found by this corpus (service bugs when it was written): the JSON parser's own limits
        # must be 422s, not 500s ...
        with_boxes("boxes-nested-100000-deep", "[" * deep + "]" * deep, 422, "invalid_request"),
        with_boxes(
            "box-integer-with-5000-digits",
            "[[[0, 0, " + "9" * 5000 + ", 10]]]",
            422,
            "invalid_request",
        ),
        with_boxes(
            "box-integer-beyond-float", "[[[0, 0, 1" + "0" * 400 + ", 10]]]", 422, "invalid_request"
        ),
        # ... and boxes whose crop arithmetic overflows must be refused, not answered with null
        # keypoints (or a 500 from /pose/render).
        with_boxes(
            "box-spanning-1e308", "[[[-1e308, -1e308, 1e308, 1e308]]]", 422, "invalid_request"
        ),
        with_boxes(
            "render-box-1e10",
            "[[[0, 0, 1e10, 1e10]]]",
            422,
            "invalid_request",
            route="/pose/render",
        ),
    ]


CASES = image_cases() + box_cases()


# ---------------------------------------------------------------------------------------------
# The server, the tally, the checks


@dataclass
class Tally:
    baseline_rss_kib: int  # after warm-up
    peaks_measured: bool  # VmHWM reset before each input (else VmRSS after each answer)
    inputs: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    peak_rss_kib: int = 0
    peak_input: str = ""

    def record(self, name: str, status: int, peak_kib: int) -> None:
        self.inputs += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status >= 500:
            self.server_errors.append(f"{name}: {status}")
        if peak_kib > self.peak_rss_kib:
            self.peak_rss_kib, self.peak_input = peak_kib, name


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with service_process(
        log,
        max_request_bytes=MAX_BYTES,
        max_image_pixels=MAX_PIXELS,
        max_images=MAX_IMAGES,
        max_boxes=MAX_BOXES,
    ) as process:
        yield process


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # A new connection for every request: uvicorn closes a connection after an unhandled error,
    # and a request that raced that close would fail the next input instead of its own.
    with httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        yield http


@pytest.fixture(scope="module")
def tally(server: ServiceProcess, client: httpx.Client) -> Tally:
    for _ in range(5):  # warm-up: the first requests allocate what every later one reuses
        probe(server, client)
    rss = server.rss_kib()
    return Tally(baseline_rss_kib=rss, peaks_measured=server.reset_peak(), peak_rss_kib=rss)


def probe(server: ServiceProcess, client: httpx.Client) -> None:
    response = client.post(f"{server.url}/pose", files=[image_part(PROBE)])
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["persons"]) == 1


def try_input(
    server: ServiceProcess, tally: Tally, name: str, request: Callable[[], httpx.Response]
) -> tuple[httpx.Response, int]:
    """Send one input; count it; return the answer and the memory peak while it was handled."""
    tally.peaks_measured = tally.peaks_measured and server.reset_peak()
    response = request()
    peak = server.peak_rss_kib() if tally.peaks_measured else server.rss_kib()
    tally.record(name, response.status_code, peak)
    return response, peak


def assert_answer(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status, response.text[:500]
    if status == 200:
        return
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] in ERROR_CODES[status], body
    if code:
        assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def assert_peak(tally: Tally, peak_kib: int) -> None:
    growth_mib = (peak_kib - tally.baseline_rss_kib) / 1024
    assert peak_kib - tally.baseline_rss_kib <= PEAK_GROWTH_LIMIT_KIB, (
        f"the server's memory peaked {growth_mib:.0f} MiB above its level after warm-up"
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_gets_its_status_and_the_service_goes_on(
    server: ServiceProcess, client: httpx.Client, tally: Tally, case: Hostile
) -> None:
    response, peak = try_input(
        server,
        tally,
        case.name,
        lambda: client.post(
            f"{server.url}{case.route}",
            files=case.files,
            data=case.data,
            content=case.content,
            headers=case.headers,
        ),
    )
    assert_answer(response, case.status, case.code)
    if case.status == 200:
        if case.route == "/pose/render":
            assert response.headers["content-type"] == "image/jpeg"
            picture = cv2.imdecode(np.frombuffer(response.content, np.uint8), cv2.IMREAD_COLOR)
            assert picture is not None
        else:
            body = response.json()
            for result in body["results"]:
                for person in result["persons"]:
                    coordinates = [k[axis] for k in person["keypoints"] for axis in ("x", "y")]
                    assert all(isinstance(v, float) for v in coordinates), person
            if case.check is not None:
                case.check(body)
    assert_peak(tally, peak)
    probe(server, client)


def mutants(kind: str, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Small valid files with random bytes flipped, inserted, deleted or cut off."""
    original = encoded(kind, smooth_bgr(24, 32))
    rng = random.Random(seed)
    for i in range(count):
        data = bytearray(original)
        how = rng.choice(["flip", "flip", "insert", "delete", "cut"])
        if how == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif how == "insert":
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        elif how == "delete":
            at = rng.randrange(len(data))
            del data[at : at + rng.randint(1, 64)]
        else:
            del data[rng.randrange(1, len(data)) :]
        yield f"{kind}-{i}-{how}", bytes(data)


MUTANT_KINDS = ["jpeg", "png", "webp-lossy", "webp-lossless", "bmp"]
MUTANTS_PER_KIND = 40


@pytest.mark.parametrize("kind", MUTANT_KINDS)
def test_mutated_files_get_200_400_or_413_and_bounded_memory(
    server: ServiceProcess, client: httpx.Client, tally: Tally, kind: str
) -> None:
    """A mutated file may still decode (200), or be refused (400, or 413 if a size field grew)."""
    wrong = []
    for name, data in mutants(kind, MUTANTS_PER_KIND, seed=MUTANT_KINDS.index(kind)):
        response, peak = try_input(
            server,
            tally,
            name,
            lambda data=data: client.post(f"{server.url}/pose", files=[image_part(data)]),
        )
        try:
            assert response.status_code in (200, 400, 413), response.text[:300]
            assert_answer(response, response.status_code, None)
            assert_peak(tally, peak)
        except AssertionError as error:
            wrong.append(f"{name}: {error}")
        probe(server, client)
    assert not wrong, "\n".join(wrong)


def test_zz_summary_memory_stayed_bounded_and_no_5xx(
    server: ServiceProcess, tally: Tally, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Runs last (file order): the figures for the README, and the memory bounds."""
    assert tally.inputs > 0
    end_rss = server.rss_kib()
    summary = {
        "inputs_tried": tally.inputs,
        "answers_5xx": len(tally.server_errors),
        "statuses": dict(sorted(tally.statuses.items())),
        "rss_after_warmup_mib": round(tally.baseline_rss_kib / 1024, 1),
        "rss_peak_mib": round(tally.peak_rss_kib / 1024, 1),
        "rss_peak_input": tally.peak_input,
        "rss_peak_is": "VmHWM per input" if tally.peaks_measured else "VmRSS after each answer",
        "rss_at_end_mib": round(end_rss / 1024, 1),
    }
    path = tmp_path_factory.getbasetemp() / "hostile-summary.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"\nhostile inputs: {json.dumps(summary)} ({path})")
    assert not tally.server_errors, tally.server_errors
    assert tally.peak_rss_kib - tally.baseline_rss_kib <= PEAK_GROWTH_LIMIT_KIB, summary
    assert end_rss - tally.baseline_rss_kib <= END_GROWTH_LIMIT_KIB, summary
