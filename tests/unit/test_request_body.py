"""Reading /pose bodies: the `boxes` field's JSON, and multipart versus raw images (no server:
requests are built in memory and handed to the parser as Starlette would)."""

import math
import random
from urllib.parse import quote

import httpx
import pytest
from starlette.requests import Request

from dipr.core.errors import DiprError, InvalidInput, LimitExceeded
from dipr.service.client import Part, encode_multipart
from dipr.service.http.errors import MalformedRequest, UnsupportedContentType
from dipr.service.http.request_body import (
    MAX_FIELDS,
    FormPart,
    parse_boxes,
    parsed_form,
    read_pose_request,
    simple_form,
)


def unnamed(count: int) -> list[str | None]:
    return [None] * count


def test_no_boxes_means_the_whole_of_every_image():
    assert parse_boxes(None, unnamed(2), 8) == [None, None]
    assert parse_boxes("", unnamed(1), 8) == [None]
    assert parse_boxes("  \n", unnamed(3), 8) == [None, None, None]


def test_boxes_per_image_with_empty_and_null_for_whole_images():
    parsed = parse_boxes("[[[1, 2, 3, 4], [5.5, 6, 7, 8e2]], [], null]", unnamed(3), 8)
    assert parsed == [[(1.0, 2.0, 3.0, 4.0), (5.5, 6.0, 7.0, 800.0)], None, None]
    assert all(isinstance(v, float) for v in parsed[0][0])


@pytest.mark.parametrize(
    ("text", "count", "message"),
    [
        ("[[1, 2, 3, 4]]", 1, r"image 1: boxes\[0\] is one box, not a list of boxes"),
        ("[[[1, 2, 3]]]", 1, r"image 1: boxes\[0\]\[0\] must be \[x1, y1, x2, y2\], four numbers"),
        ("[[[1, 2, 3, 4, 5]]]", 1, r"boxes\[0\]\[0\] must be"),
        ('[[[1, 2, "3", 4]]]', 1, r"boxes\[0\]\[0\] must be"),
        ("[[[1, 2, true, 4]]]", 1, r"boxes\[0\]\[0\] must be"),
        ("[[[1, 2, null, 4]]]", 1, r"boxes\[0\]\[0\] must be"),
        ("[[], [[0, 0, 1, 1], {}]]", 2, r"image 2: boxes\[1\]\[1\] must be .*got \{\}"),
        (
            '[{"x": 1}]',
            1,
            r"boxes\[0\] must be a list of \[x1, y1, x2, y2\] boxes, got a JSON object",
        ),
        ("[[[0, 0, 1, 1]]]", 2, r"must be a list of 2 \(one per image\), got a list of 1"),
        ('{"boxes": []}', 1, "must be a list of 1 .*got a JSON object"),
        ("[[[0, 0, 1, 1]]", 1, "not valid JSON"),
        ("NaN-ish", 1, "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, 1, "not valid JSON"),
    ],
)
def test_malformed_boxes_are_refused_with_where_and_what(text, count, message):
    with pytest.raises(InvalidInput, match=message):
        parse_boxes(text, unnamed(count), 8)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_a_bare_box_gets_the_shape_by_example(count):
    """A flat [x1, y1, x2, y2], for one image or several (4 of them: as many as its numbers)."""
    with pytest.raises(InvalidInput) as refused:
        parse_boxes("[10, 20, 110, 220]", unnamed(count), 8)
    message = refused.value.message
    assert message.startswith("boxes [10, 20, 110, 220] is a single box; ")
    assert "boxes must be one list of [x1, y1, x2, y2] boxes per image" in message
    assert "for one image with one box send [[[x1, y1, x2, y2]]]" in message
    assert message.endswith("(here [[[10, 20, 110, 220]]])")


def test_a_list_of_boxes_without_the_list_per_image_says_so():
    with pytest.raises(InvalidInput, match="write it \\[\\[0, 0, 10, 10\\]\\]"):
        parse_boxes("[[0, 0, 10, 10]]", ["a.jpg"], 8)
    with pytest.raises(InvalidInput, match="without the list per image around them"):
        parse_boxes("[[0, 0, 10, 10], [5, 5, 20, 20]]", ["a.jpg"], 8)
    with pytest.raises(InvalidInput, match="one pair of brackets too many"):
        parse_boxes("[[[[0, 0, 10, 10]]]]", ["a.jpg"], 8)


def test_box_errors_name_the_image_by_position_and_file_name():
    with pytest.raises(InvalidInput) as refused:
        parse_boxes('[[], [[0, 0, 1, 1], [0, "0", 1, 1]], []]', ["a.jpg", "b.jpg", "c.jpg"], 8)
    assert refused.value.message.startswith("image 2 (b.jpg): boxes[1][1] must be [x1, y1, x2, y2]")
    assert 'got [0, "0", 1, 1]' in refused.value.message


def test_a_value_quoted_in_a_message_is_cut_short():
    deep = "[" * 900 + "]" * 900  # parses: the message quotes 4 levels, then [...]
    with pytest.raises(
        InvalidInput, match=r"boxes\[0\]\[0\] must be .*, got \[\[\[\[\[\.\.\.\]\]\]\]\]$"
    ):
        parse_boxes(f"[[{deep}]]", unnamed(1), 8)
    with pytest.raises(InvalidInput) as refused:
        parse_boxes(f"[[[{', '.join(['1'] * 10_000)}]]]", unnamed(1), 8)
    assert len(refused.value.message) < 200 and refused.value.message.endswith("1, ...]")


def test_numbers_beyond_any_float_become_inf_for_the_core_to_refuse():
    (boxes,) = parse_boxes("[[[0, 0, 1" + "0" * 400 + ", 1e999]]]", unnamed(1), 8)
    assert boxes is not None and boxes[0][2] == math.inf and boxes[0][3] == math.inf


def test_too_many_boxes_in_all_images_together():
    assert parse_boxes("[[[0,0,1,1],[0,0,1,1]], [[0,0,1,1]]]", unnamed(2), 3) is not None
    with pytest.raises(LimitExceeded, match="at most 3 boxes"):
        parse_boxes("[[[0,0,1,1],[0,0,1,1]], [[0,0,1,1],[0,0,1,1]]]", unnamed(2), 3)


def request(body: bytes, content_type: str | None, query: str = "") -> Request:
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    headers.append((b"content-length", str(len(body)).encode()))
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    # "app": Starlette turns multipart errors into HTTPException only inside an application.
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/pose",
        "query_string": query.encode(),
        "headers": headers,
        "app": None,
    }
    return Request(scope, receive)


def multipart(*parts: tuple[str, str | None, bytes, str | None]) -> tuple[bytes, str]:
    """(field, file name or None for a text field, content, content type) → body, type."""
    boundary = "dipr-test-boundary"
    chunks = []
    for field, filename, content, part_type in parts:
        disposition = f'form-data; name="{field}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if part_type is not None:
            head += f"Content-Type: {part_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + content + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def test_a_raw_image_body_is_one_image_without_boxes():
    (image,) = await read_pose_request(request(b"\xff\xd8\xff", "Image/JPEG; q=1"), 4, 8)
    assert (image.data, image.media_type, image.boxes) == (b"\xff\xd8\xff", "image/jpeg", None)
    assert image.name is None


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "image/pjpeg"])
async def test_a_raw_body_that_declares_no_image_type_is_one_image_for_the_bytes_to_decide(
    content_type,
):
    """What requests.post(url, data=f) and httpx.post(url, content=b) send: octet-stream or no
    type at all. The format is read from the bytes later (`read_header`), as for a part."""
    (image,) = await read_pose_request(request(b"GIF89a...", content_type), 4, 8)
    assert (image.data, image.boxes) == (b"GIF89a...", None)
    assert image.media_type == (content_type or "")


async def test_a_raw_body_takes_its_boxes_from_the_query():
    boxes = quote("[[[0, 0, 10, 20], [5, 5, 50, 60]]]")
    (image,) = await read_pose_request(request(b"x", None, f"boxes={boxes}&detect=false"), 4, 8)
    assert image.boxes == [(0, 0, 10, 20), (5, 5, 50, 60)]
    (image,) = await read_pose_request(request(b"x", "image/png", "boxes="), 4, 8)
    assert image.boxes is None  # empty: find the persons, as for the form field


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (f"boxes={quote('[[0, 0, 10, 20]]')}", r"image 1: boxes\[0\] is one box"),
        (
            f"boxes={quote('[0, 0, 10, 20]')}",
            r"is a single box; .*\(here \[\[\[0, 0, 10, 20\]\]\]\)",
        ),
        (f"boxes={quote('[[], []]')}", r"must be a list of 1 \(one per image\), got a list of 2"),
        ("boxes=%5B%5D&boxes=%5B%5D", r"query parameter \?boxes= was sent 2 times; send it once"),
    ],
)
async def test_bad_query_boxes_are_refused_before_the_body_is_read(query, message):
    with pytest.raises(InvalidInput, match=message):
        await read_pose_request(unreadable(query), 4, 8)


def unreadable(query: str) -> Request:
    """A raw-body request whose body must not be read."""

    async def receive() -> dict[str, object]:
        raise AssertionError("the body was read")

    scope = {"type": "http", "method": "POST", "path": "/pose", "query_string": query.encode()}
    return Request({**scope, "headers": [(b"content-type", b"image/jpeg")]}, receive)


async def test_multipart_images_keep_their_order_types_and_boxes():
    body, content_type = multipart(
        ("image", "a.png", b"first", "image/png; name=a"),
        ("image", "b.bin", b"second", None),
        ("boxes", None, b"[[[0, 0, 10, 10]], []]", None),
    )
    first, second = await read_pose_request(request(body, content_type), 4, 8)
    assert (first.data, first.media_type, first.boxes) == (b"first", "image/png", [(0, 0, 10, 10)])
    assert (second.data, second.media_type, second.boxes) == (b"second", "", None)
    assert (first.name, second.name) == ("a.png", "b.bin")


async def test_multipart_box_errors_name_the_upload():
    body, content_type = multipart(
        ("image", "a.png", b"first", "image/png"),
        ("image", "b.png", b"second", "image/png"),
        ("boxes", None, b"[[], [[0, 0, 10]]]", None),
    )
    with pytest.raises(InvalidInput, match=r"^image 2 \(b\.png\): boxes\[1\]\[0\] must be"):
        await read_pose_request(request(body, content_type), 4, 8)


async def test_boxes_in_the_query_of_a_multipart_request_are_refused():
    body, content_type = multipart(("image", "a.png", b"first", "image/png"))
    with pytest.raises(InvalidInput, match="send the boxes in the form field 'boxes'"):
        await read_pose_request(request(body, content_type, "boxes=%5B%5D"), 4, 8)


async def test_a_boxes_field_sent_twice_is_refused_not_collapsed():
    body, content_type = multipart(
        ("image", "a.png", b"first", "image/png"),
        ("boxes", None, b"[[[0, 0, 10, 10]]]", None),
        ("boxes", None, b"[[[5, 5, 20, 20]]]", None),
    )
    with pytest.raises(InvalidInput, match="the form field 'boxes' was sent 2 times; send it once"):
        await read_pose_request(request(body, content_type), 4, 8)


@pytest.mark.parametrize(
    ("parts", "error", "message"),
    [
        ([("boxes", None, b"[]", None)], InvalidInput, "no file in the form field 'image'"),
        (
            [("image", None, b"text", None)],
            InvalidInput,
            "^image 1: the form field 'image' must hold files",
        ),
        ([("image", f"{i}.png", b"x", "image/png") for i in range(3)], LimitExceeded, "at most 2"),
    ],
)
async def test_multipart_forms_that_are_not_pose_requests(parts, error, message):
    body, content_type = multipart(*parts)
    with pytest.raises(error, match=message):
        await read_pose_request(request(body, content_type), 2, 8)


async def test_a_broken_multipart_body_is_malformed():
    with pytest.raises(MalformedRequest, match="cannot parse the multipart body"):
        await read_pose_request(request(b"garbage", "multipart/form-data"), 2, 8)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/gif"])
async def test_other_content_types_are_refused_naming_what_to_send(content_type):
    with pytest.raises(UnsupportedContentType) as refused:
        # The type is refused first, whatever the query holds.
        await read_pose_request(request(b"...", content_type, "boxes=1&boxes=2"), 2, 8)
    message = refused.value.message
    assert "application/octet-stream or without a content type" in message
    assert "or multipart/form-data with files in the field 'image'" in message
    assert message.endswith(f"got {content_type!r}")


# The quick split of the usual multipart body (`simple_form`) against Starlette's parser, which
# reads every other body: it must read what Starlette reads, or leave the body to it.


async def starlette_reads(body: bytes, content_type: str, max_files: int = 4) -> list[FormPart]:
    return await parsed_form(request(body, content_type), max_files)


def usual_bodies() -> list[tuple[bytes, str]]:
    """What the clients send: `dipr pose`'s encoder, httpx's (as requests', a browser's), the
    hand-written one of these tests; with and without boxes, several images, odd file names."""
    jpeg = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\r\n--not-the-boundary\r\n"
    bodies = [
        encode_multipart([Part("image", jpeg, "astronaut.jpg", "image/jpeg")]),
        encode_multipart(
            [Part("image", jpeg, "a b.jpg", "image/jpeg"), Part("boxes", b"[[[1, 2, 3, 4]]]")]
        ),
        encode_multipart(
            [
                Part("image", b"", "", None),
                Part("image", jpeg, "caf\u00e9 \u00fc.png", "image/png; q=1"),
                Part("boxes", b"[[], [[0, 0, 10, 10]]]"),
                Part("other", "\u00e9t\u00e9".encode("latin-1")),  # not UTF-8: read as Latin-1
            ]
        ),
        multipart(("image", "x.bmp", b"BM..", "image/bmp"), ("boxes", None, b"", None)),
        multipart(("boxes", None, b"[]", None), ("image", None, b"text", None)),
    ]
    for files, data in (
        ({"image": ("a.jpg", jpeg, "image/jpeg")}, {"boxes": "[[[1, 2, 3, 4]]]"}),
        ([("image", ("a.jpg", jpeg, "image/jpeg")), ("image", ("b", b"x"))], {}),
    ):
        sent = httpx.Request("POST", "http://dipr/pose", files=files, data=data)
        bodies.append((sent.read(), sent.headers["content-type"]))
    return bodies


@pytest.mark.parametrize("index", range(len(usual_bodies())))
async def test_the_quick_split_reads_the_usual_bodies_as_starlette_does(index: int) -> None:
    body, content_type = usual_bodies()[index]
    quick = simple_form(body, content_type, 4, MAX_FIELDS)
    assert quick is not None, body[:300]
    assert quick == await starlette_reads(body, content_type)


BOUNDARY = "dipr-test-boundary"
TYPE = f"multipart/form-data; boundary={BOUNDARY}"
HEAD = b'--dipr-test-boundary\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n'
END = b"\r\n--dipr-test-boundary--\r\n"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"preamble\r\n" + HEAD + b"\r\nx" + END, TYPE),  # text before the first boundary
        (HEAD + b"X-Other: 1\r\n\r\nx" + END, TYPE),  # another part header
        (HEAD + HEAD[22:] + b"\r\nx" + END, TYPE),  # Content-Disposition twice
        (HEAD.replace(b'; filename="a"', b"; filename=a") + b"\r\nx" + END, TYPE),  # unquoted
        (HEAD.replace(b"a", b'a\\"b') + b"\r\nx" + END, TYPE),  # an escaped quote
        (HEAD.replace(b'name="image"', b"") + b"\r\nx" + END, TYPE),  # no name
        (HEAD.replace(b"Content-Disposition: ", b"Content-Disposition:") + b"\r\nx" + END, TYPE),
        (HEAD + b"\r\nx" + END + b"epilogue", TYPE),  # text after the last boundary
        (HEAD + b"\r\nx\r\n--dipr-test-boundaryX" + END, TYPE),  # the boundary, not ending it
        (HEAD + b"\r\nx", TYPE),  # unterminated
        (HEAD + b"\r\nx" + END, TYPE + "; charset=latin-1"),  # another parameter
        (HEAD + b"\r\nx" + END, "multipart/form-data"),  # no boundary
        (HEAD + b"\r\nx" + END.replace(b"\r\n--d", b"\n--d"), TYPE),  # bare LF
        (HEAD * 5 + b"\r\nx" + END, TYPE),  # 5 files, 4 allowed
        (
            b"".join(
                b'--dipr-test-boundary\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
                for _ in range(MAX_FIELDS + 1)
            )
            + HEAD
            + b"\r\nx"
            + END,
            TYPE,
        ),
        (
            b'--dipr-test-boundary\r\nContent-Disposition: form-data; name="boxes"\r\n\r\n'
            + b" " * (1024 * 1024 + 1)
            + END,
            TYPE,
        ),  # a text field over Starlette's 1 MiB
    ],
)
def test_other_bodies_are_left_to_starlettes_parser(body: bytes, content_type: str) -> None:
    assert simple_form(body, content_type, 4, MAX_FIELDS) is None


async def test_bodies_the_quick_split_reads_starlette_reads_the_same() -> None:
    """Usual bodies damaged at random (bytes changed, cut, doubled, CR and LF and quotes thrown
    in): whenever the quick split still reads one, Starlette's parser reads the same parts."""
    generator = random.Random(16)
    noise = [b"\r", b"\n", b"\r\n", b'"', b";", b"-", b"--", b" ", b"\\", b"=", b"\x00"]
    read = 0
    for _ in range(1500):
        body, content_type = generator.choice(usual_bodies()[:3] + usual_bodies()[-2:])
        data = bytearray(body)
        for _ in range(generator.randint(1, 3)):
            at = generator.randrange(len(data))
            change = generator.randrange(4)
            if change == 0:
                data[at : at + 1] = generator.choice(noise)
            elif change == 1:
                data.insert(at, generator.randrange(256))
            elif change == 2:
                del data[at : at + generator.randint(1, 8)]
            else:
                data[at:at] = data[at : at + generator.randint(1, 40)]
        quick = simple_form(bytes(data), content_type, 4, MAX_FIELDS)
        if quick is None:
            continue
        read += 1
        try:
            assert quick == await starlette_reads(bytes(data), content_type)
        except DiprError as refused:
            raise AssertionError(
                f"Starlette refused what the quick split read: {data!r}"
            ) from refused
    assert read > 100  # many damaged bodies are still of the usual shape (a changed byte of data)


async def test_a_quick_read_request_falls_back_to_starlette_with_the_body_it_read() -> None:
    """A small body of another shape is read once, then parsed by Starlette from what was read."""
    body = HEAD + b"Content-Type: image/png\r\nX-Other: 1\r\n\r\nx" + END
    (image,) = await read_pose_request(request(body, TYPE), 4, 8)
    assert (image.data, image.media_type, image.name) == (b"x", "image/png", "a")
