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
"""

import json
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from dipr.core.crops import Box
from dipr.core.errors import InvalidInput, LimitExceeded, image_place
from dipr.core.images import is_accepted_media_type, media_type
from dipr.service.http.errors import MalformedRequest, UnsupportedContentType
from dipr.service.pipeline import ImageInput

MULTIPART = "multipart/form-data"
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


async def _read_form(request: Request, max_images: int, max_boxes: int) -> list[ImageInput]:
    try:
        form = await request.form(max_files=max_images, max_fields=16)
    except HTTPException as error:
        if "Too many files" in str(error.detail):
            raise LimitExceeded(f"at most {max_images} images per request") from None
        raise MalformedRequest(f"cannot parse the multipart body: {error.detail}") from None
    uploads = form.getlist("image")
    if not uploads:
        raise InvalidInput("no file in the form field 'image': send each image as a file part")
    files: list[UploadFile] = []
    for index, upload in enumerate(uploads):
        if not isinstance(upload, UploadFile):
            raise InvalidInput(
                f"{image_place(index, None)}: the form field 'image' must hold files, not text "
                "(a part with a filename in its Content-Disposition)"
            )
        files.append(upload)
    raw_boxes = _at_most_one(form.getlist("boxes"), "the form field 'boxes'")
    if isinstance(raw_boxes, UploadFile):
        raw_boxes = (await raw_boxes.read()).decode("utf-8", errors="replace")
    names = [upload.filename for upload in files]
    boxes = parse_boxes(raw_boxes, names, max_boxes)
    return [
        ImageInput(await upload.read(), media_type(upload.content_type), image_boxes, name)
        for upload, image_boxes, name in zip(files, boxes, names, strict=True)
    ]


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
        value: Any = json.loads(text, parse_int=float)
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
        where = f"{image_place(index, names[index])}: boxes[{index}]"
        if _is_box(image_boxes):
            raise InvalidInput(
                f"{where} is one box, not a list of boxes: write it [{_json(image_boxes)}]; "
                f"{BOXES_SHAPE}"
            )
        if not isinstance(image_boxes, list):
            raise InvalidInput(
                f"{where} must be a list of [x1, y1, x2, y2] boxes, got a JSON "
                f"{_kind(image_boxes)}; {BOXES_SHAPE}"
            )
        total += len(image_boxes)
        if total > max_boxes:
            raise LimitExceeded(f"at most {max_boxes} boxes per request")
        parsed.append([_box(box, f"{where}[{i}]") for i, box in enumerate(image_boxes)])
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


def _box(value: Any, where: str) -> Box:
    if not _is_box(value):
        hint = ""
        if isinstance(value, list) and any(_is_box(item) for item in value):
            hint = " (one pair of brackets too many?)"
        raise InvalidInput(
            f"{where} must be [x1, y1, x2, y2], four numbers, got {_json(value)}{hint}"
        )
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))
