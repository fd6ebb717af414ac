"""Reading /pose bodies: the `boxes` field's JSON, and multipart versus raw images (no server:
requests are built in memory and handed to the parser as Starlette would)."""

import math

import pytest
from starlette.requests import Request

from dipr.core.errors import InvalidInput, LimitExceeded
from dipr.service.http.errors import MalformedRequest, UnsupportedContentType
from dipr.service.http.request_body import parse_boxes, read_pose_request


def test_no_boxes_means_the_whole_of_every_image():
    assert parse_boxes(None, 2, 8) == [None, None]
    assert parse_boxes("", 1, 8) == [None]
    assert parse_boxes("  \n", 3, 8) == [None, None, None]


def test_boxes_per_image_with_empty_and_null_for_whole_images():
    parsed = parse_boxes("[[[1, 2, 3, 4], [5.5, 6, 7, 8e2]], [], null]", 3, 8)
    assert parsed == [[(1.0, 2.0, 3.0, 4.0), (5.5, 6.0, 7.0, 800.0)], None, None]
    assert all(isinstance(v, float) for v in parsed[0][0])


@pytest.mark.parametrize(
    ("text", "count", "message"),
    [
        ("[[1, 2, 3, 4]]", 1, r"boxes\[0\]\[0\] must be \[x1, y1, x2, y2\] numbers"),  # flat list
        ("[[[1, 2, 3]]]", 1, r"boxes\[0\]\[0\] must be"),
        ("[[[1, 2, 3, 4, 5]]]", 1, r"boxes\[0\]\[0\] must be"),
        ('[[[1, 2, "3", 4]]]', 1, r"boxes\[0\]\[0\] must be"),
        ("[[[1, 2, true, 4]]]", 1, r"boxes\[0\]\[0\] must be"),
        ("[[[1, 2, null, 4]]]", 1, r"boxes\[0\]\[0\] must be"),
        ("[[], [[0, 0, 1, 1], {}]]", 2, r"boxes\[1\]\[1\] must be"),
        ('[{"x": 1}]', 1, r"boxes\[0\] must be a list"),
        ("[[[0, 0, 1, 1]]]", 2, r"one list of boxes per image \(2\)"),
        ('{"boxes": []}', 1, "one list of boxes per image"),
        ("[[[0, 0, 1, 1]", 1, "not valid JSON"),
        ("NaN-ish", 1, "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, 1, "not valid JSON"),
    ],
)
def test_malformed_boxes_are_refused_with_where_and_what(text, count, message):
    with pytest.raises(InvalidInput, match=message):
        parse_boxes(text, count, 8)


def test_numbers_beyond_any_float_become_inf_for_the_core_to_refuse():
    (boxes,) = parse_boxes("[[[0, 0, 1" + "0" * 400 + ", 1e999]]]", 1, 8)
    assert boxes is not None and boxes[0][2] == math.inf and boxes[0][3] == math.inf


def test_too_many_boxes_in_all_images_together():
    assert parse_boxes("[[[0,0,1,1],[0,0,1,1]], [[0,0,1,1]]]", 2, 3) is not None
    with pytest.raises(LimitExceeded, match="at most 3 boxes"):
        parse_boxes("[[[0,0,1,1],[0,0,1,1]], [[0,0,1,1],[0,0,1,1]]]", 2, 3)


def request(body: bytes, content_type: str | None) -> Request:
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
    scope = {"type": "http", "method": "POST", "path": "/pose", "headers": headers, "app": None}
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


async def test_multipart_images_keep_their_order_types_and_boxes():
    body, content_type = multipart(
        ("image", "a.png", b"first", "image/png; name=a"),
        ("image", "b.bin", b"second", None),
        ("boxes", None, b"[[[0, 0, 10, 10]], []]", None),
    )
    first, second = await read_pose_request(request(body, content_type), 4, 8)
    assert (first.data, first.media_type, first.boxes) == (b"first", "image/png", [(0, 0, 10, 10)])
    assert (second.data, second.media_type, second.boxes) == (b"second", "", None)


@pytest.mark.parametrize(
    ("parts", "error", "message"),
    [
        ([("boxes", None, b"[]", None)], InvalidInput, "no file in the form field 'image'"),
        ([("image", None, b"text", None)], InvalidInput, "must hold files"),
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


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/json", "image/gif"])
async def test_other_content_types_are_refused_naming_what_to_send(content_type):
    with pytest.raises(UnsupportedContentType, match="send multipart/form-data"):
        await read_pose_request(request(b"...", content_type), 2, 8)
