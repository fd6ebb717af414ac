"""Reading a /pose request body into images and boxes: a multipart form, or one raw image.

Two shapes of request:

- multipart/form-data: files in the field `image`, and at most one field `boxes`;
- one image as the whole body, with the boxes, if any, in the query parameter `?boxes=`. The
  declared type only gates (an image type, application/octet-stream, or none at all, as
  `requests.post(url, data=f)` and `httpx.post(url, content=b)` send): the bytes decide the format,
  as for a multipart part.

`boxes` is the same JSON in both places: one list of [x1, y1, x2, y2] boxes per image, so
`[[[x1, y1, x2, y2], ...]]` for one image. Only the structure is checked here (which fields, how
many, JSON shape of `boxes`); what a box or an image must be is checked once, by the core, when
the pipeline decodes and crops. Every error about one image names it (`image_place`).

A small multipart body of the usual shape (what browsers, curl, requests, httpx and `dipr pose`
send) is split by `simple_form`, in a few bytes searches; any other body, and every broken one,
goes through Starlette's parser, whose limits and messages are the service's.
"""

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from dipr.core.crops import Box
from dipr.core.errors import InvalidInput, LimitExceeded, image_place
from dipr.core.images import is_accepted_media_type, media_type
from dipr.service.http.errors import MalformedRequest, UnsupportedContentType
from dipr.service.pipeline import ImageInput

MULTIPART = "multipart/form-data"
MAX_FIELDS = 16  # text fields in one form: `boxes`, and a few a client may add
# Bodies up to this size may take the quick split: as large as Starlette keeps a file in memory
# (larger ones it spools to disk as they stream in, which the quick split, holding the whole body,
# would not).
SIMPLE_FORM_MAX_BYTES = 1024 * 1024
# What every message about the shape of `boxes` ends with: the one shape, by example.
BOXES_SHAPE = (
    "boxes must be one list of [x1, y1, x2, y2] boxes per image: for one image with one box send "
    "[[[x1, y1, x2, y2]]]"
)


async def read_pose_request(request: Request, max_images: int, max_boxes: int) -> list[ImageInput]:
    media = media_type(request.headers.get("content-type"))
    if media != MULTIPART and not is_accepted_media_type(media):
        raise UnsupportedContentType(
            "send one JPEG, PNG, WebP or BMP image as the body (as image/jpeg, image/png, "
            "image/webp, image/bmp, application/octet-stream or without a content type), or "
            f"multipart/form-data with files in the field 'image'; got {media[:100]!r}"
        )
    query_boxes = _at_most_one(request.query_params.getlist("boxes"), "the query parameter ?boxes=")
    if media == MULTIPART:
        if query_boxes is not None:
            # Two places for the boxes of one request: refused rather than one silently ignored.
            raise InvalidInput(
                "?boxes= is for a request whose body is one image; in a multipart/form-data "
                "request send the boxes in the form field 'boxes'"
            )
        return await _read_form(request, max_images, max_boxes)
    # Checked before the body is read: a bad ?boxes= costs no upload.
    (boxes,) = parse_boxes(query_boxes, [None], max_boxes)
    return [ImageInput(await request.body(), media, boxes)]


@dataclass(frozen=True)
class FormPart:
    """One part of a multipart form: a file (`filename` set, even empty) or a text field."""

    name: str
    content: bytes | str  # a file's bytes; a text field's text
    filename: str | None = None
    content_type: str | None = None  # a file's declared type, as sent


async def _read_form(request: Request, max_images: int, max_boxes: int) -> list[ImageInput]:
    parts = await _simple_form_of(request, max_images)
    if parts is None:
        parts = await parsed_form(request, max_images)
    uploads = [part for part in parts if part.name == "image"]
    if not uploads:
        raise InvalidInput("no file in the form field 'image': send each image as a file part")
    for index, upload in enumerate(uploads):
        if upload.filename is None:
            raise InvalidInput(
                f"{image_place(index, None)}: the form field 'image' must hold files, not text "
                "(a part with a filename in its Content-Disposition)"
            )
    boxes_part = _at_most_one(
        [part for part in parts if part.name == "boxes"], "the form field 'boxes'"
    )
    raw_boxes = None if boxes_part is None else boxes_part.content
    if isinstance(raw_boxes, bytes):  # sent as a file
        raw_boxes = raw_boxes.decode("utf-8", errors="replace")
    names = [upload.filename for upload in uploads]
    boxes = parse_boxes(raw_boxes, names, max_boxes)
    return [
        ImageInput(_as_bytes(upload.content), media_type(upload.content_type), image_boxes, name)
        for upload, image_boxes, name in zip(uploads, boxes, names, strict=True)
    ]


def _as_bytes(content: bytes | str) -> bytes:
    return content if isinstance(content, bytes) else content.encode()  # only files get here


async def _simple_form_of(request: Request, max_images: int) -> list[FormPart] | None:
    """The form split by `simple_form` when the body is small (by its Content-Length) and of the
    usual shape; else None, with the body left for Starlette's parser (read or not)."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit() or int(declared) > SIMPLE_FORM_MAX_BYTES:
        return None
    body = await request.body()  # kept by the request: Starlette's parser reads it from there
    return simple_form(body, request.headers["content-type"], max_images, MAX_FIELDS)


async def parsed_form(request: Request, max_images: int) -> list[FormPart]:
    """The form as Starlette parses it: its limits and its messages, for any body."""
    try:
        form = await request.form(max_files=max_images, max_fields=MAX_FIELDS)
    except HTTPException as error:
        if "Too many files" in str(error.detail):
            raise LimitExceeded(f"at most {max_images} images per request") from None
        raise MalformedRequest(f"cannot parse the multipart body: {error.detail}") from None
    try:
        parts = []
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                content = await value.read()
                parts.append(FormPart(name, content, value.filename or "", value.content_type))
            else:
                parts.append(FormPart(name, value))
        return parts
    finally:
        await form.close()  # the spooled files, now rather than at garbage collection


# The usual shape, strictly: a boundary of RFC 2046's characters; part headers
# `Content-Disposition: form-data; name="…"` (with `; filename="…"` for a file) and optionally
# `Content-Type: …`, in either order, once each; names and file names quoted, without quotes,
# backslashes, semicolons or line breaks inside. Anything else is left to Starlette's parser.
_BOUNDARY_CONTENT_TYPE = re.compile(
    r"multipart/form-data; ?boundary=(?P<quote>\"?)(?P<boundary>[0-9A-Za-z'()+_,./:=?-]{1,70})"
    r"(?P=quote)",
    re.IGNORECASE,
)
_DISPOSITION = re.compile(
    rb'form-data; name="(?P<name>[^"\\;\r\n]*)"(?:; filename="(?P<filename>[^"\\;\r\n]*)")?'
)
_HEADER = re.compile(rb"(?P<name>[A-Za-z-]+): (?P<value>[^\r\n]*[^\r\n \t])\r\n")
MAX_PART_BYTES = 1024 * 1024  # Starlette's limit on a text field
# json.loads(text, parse_int=float) builds this decoder on every call.
_BOXES_JSON = json.JSONDecoder(parse_int=float)


def simple_form(
    body: bytes, content_type: str, max_files: int, max_fields: int
) -> list[FormPart] | None:
    """The parts of a multipart/form-data body of the usual shape, within the limits, exactly as
    Starlette's parser would give them; None for any other body (Starlette's parser then says
    what is wrong with it, or reads what this does not)."""
    matched = _BOUNDARY_CONTENT_TYPE.fullmatch(content_type.strip())
    if matched is None:
        return None
    delimiter = b"--" + matched["boundary"].encode()
    if not body.startswith(delimiter + b"\r\n"):
        return None
    separator = b"\r\n" + delimiter
    parts: list[FormPart] = []
    files = fields = 0
    position = len(delimiter) + 2
    while True:
        headers_end = body.find(b"\r\n\r\n", position)
        if headers_end < 0:
            return None
        headers = _part_headers(body, position, headers_end + 2)
        if headers is None:
            return None
        name, filename, part_type = headers
        content_start = headers_end + 4
        content_end = body.find(separator, content_start)
        if content_end < 0:
            return None
        after = content_end + len(separator)
        ending = body[after : after + 2]
        if filename is not None:
            files += 1
            parts.append(FormPart(name, body[content_start:content_end], filename, part_type))
        else:
            fields += 1
            if content_end - content_start > MAX_PART_BYTES:
                return None
            parts.append(FormPart(name, _decoded(body[content_start:content_end])))
        if files > max_files or fields > max_fields:
            return None  # refused by Starlette's parser, in its words
        if ending == b"\r\n":
            position = after + 2
        elif ending == b"--" and body[after + 2 :] in (b"", b"\r\n"):
            return parts
        else:
            return None


def _part_headers(body: bytes, start: int, end: int) -> tuple[str, str | None, str | None] | None:
    """(name, file name or None, content type or None) from a part's header lines
    (body[start:end], each ending in CRLF), or None if they are not of the usual shape."""
    disposition = part_type = None
    position = start
    while position < end:
        header = _HEADER.match(body, position, end)
        if header is None:
            return None
        key = header["name"].lower()
        if key == b"content-disposition" and disposition is None:
            disposition = _DISPOSITION.fullmatch(header["value"])
            if disposition is None:
                return None
        elif key == b"content-type" and part_type is None:
            part_type = header["value"].decode("latin-1")
        else:
            return None
        position = header.end()
    if disposition is None:
        return None
    filename = disposition["filename"]
    return (
        _decoded(disposition["name"]),
        None if filename is None else _decoded(filename),
        part_type,
    )


def _decoded(data: bytes) -> str:
    """Text as Starlette decodes a form's names and fields (UTF-8, else Latin-1)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _at_most_one(values: Sequence[Any], what: str) -> Any:
    """The one value sent, or None; several are refused: which would be meant is a guess."""
    if len(values) > 1:
        raise InvalidInput(
            f"{what} was sent {len(values)} times; send it once, with the boxes of every image"
        )
    return values[0] if values else None


def parse_boxes(
    text: str | None, names: Sequence[str | None], max_boxes: int
) -> list[list[Box] | None]:
    """The `boxes` JSON for images with these file names (None: no name): one list of
    [x1, y1, x2, y2] per image, in order; an empty list or null (or no text at all): none for
    that image (its persons are to be found)."""
    count = len(names)
    if text is None or not text.strip():
        return [None] * count
    try:
        # Numbers as floats: a 5000-digit integer would exceed int()'s digit limit, and one beyond
        # the float range would overflow in float(); as floats they are inf, which the core
        # refuses as non-finite.
        value: Any = (
            json.loads(text, parse_int=float)  # which refuses a byte order mark, in its words
            if text.startswith("\ufeff")
            else _BOXES_JSON.decode(text)
        )
    except (ValueError, RecursionError) as error:  # JSONDecodeError; nesting too deep to parse
        raise InvalidInput(f"boxes is not valid JSON: {error}"[:300]) from None
    if _is_box(value):
        # The commonest mistake: one bare box, without the lists per image and per box.
        raise InvalidInput(
            f"boxes {_json(value)} is a single box; {BOXES_SHAPE} (here [[{_json(value)}]])"
        )
    if not isinstance(value, list) or len(value) != count:
        got = f"a list of {len(value)}" if isinstance(value, list) else f"a JSON {_kind(value)}"
        hint = ""
        if isinstance(value, list) and value and all(_is_box(item) for item in value):
            hint = " (boxes without the list per image around them?)"
        raise InvalidInput(
            f"boxes must be a list of {count} (one per image), got {got}{hint}; {BOXES_SHAPE}"
        )
    parsed: list[list[Box] | None] = []
    total = 0
    for index, image_boxes in enumerate(value):
        if image_boxes is None or image_boxes == []:
            parsed.append(None)
            continue
        if _is_box(image_boxes):
            raise InvalidInput(
                f"{_boxes_place(names, index)} is one box, not a list of boxes: write it "
                f"[{_json(image_boxes)}]; {BOXES_SHAPE}"
            )
        if not isinstance(image_boxes, list):
            raise InvalidInput(
                f"{_boxes_place(names, index)} must be a list of [x1, y1, x2, y2] boxes, got a "
                f"JSON {_kind(image_boxes)}; {BOXES_SHAPE}"
            )
        total += len(image_boxes)
        if total > max_boxes:
            raise LimitExceeded(f"at most {max_boxes} boxes per request")
        boxes = []
        for i, box in enumerate(image_boxes):
            if not _is_box(box):
                _refuse_box(box, f"{_boxes_place(names, index)}[{i}]")
            boxes.append((float(box[0]), float(box[1]), float(box[2]), float(box[3])))
        parsed.append(boxes)
    return parsed


def _is_box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    """A parsed JSON value's type, as JSON calls it."""
    kinds = {dict: "object", list: "array", str: "string", float: "number", bool: "boolean"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _json(value: Any, depth: int = 0) -> str:
    """A parsed value as the client wrote it, cut short (about 100 characters, 4 levels deep):
    for messages. Integers, parsed as floats, are written back as integers."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, list):
        if depth >= 4:
            return "[...]"
        items, length = [], 0
        for item in value:
            if length > 100:  # enough to recognise it
                items.append("...")
                break
            items.append(_json(item, depth + 1))
            length += len(items[-1]) + 2
        return "[" + ", ".join(items) + "]"
    return json.dumps(value)[:100]


def _boxes_place(names: Sequence[str | None], index: int) -> str:
    """Where in `boxes` an image's boxes are, for a message (made only then: a file name costs a
    scan of its characters)."""
    return f"{image_place(index, names[index])}: boxes[{index}]"


def _refuse_box(value: Any, where: str) -> NoReturn:
    hint = ""
    if isinstance(value, list) and any(_is_box(item) for item in value):
        hint = " (one pair of brackets too many?)"
    raise InvalidInput(f"{where} must be [x1, y1, x2, y2], four numbers, got {_json(value)}{hint}")
