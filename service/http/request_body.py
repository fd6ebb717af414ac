"""Reading a /pose request body into images and boxes: a multipart form, or one raw image.

Only the structure is checked here (which fields, how many, JSON shape of `boxes`); what a box or
an image must be is checked once, by the core, when the pipeline decodes and crops.
"""

import json
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from dipr.core.crops import Box
from dipr.core.errors import InvalidInput, LimitExceeded
from dipr.core.images import JPEG_ALIASES, SUPPORTED_MEDIA_TYPES, media_type
from dipr.service.http.errors import MalformedRequest, UnsupportedContentType
from dipr.service.pipeline import ImageInput

MULTIPART = "multipart/form-data"


async def read_pose_request(request: Request, max_images: int, max_boxes: int) -> list[ImageInput]:
    media = media_type(request.headers.get("content-type"))
    if media in SUPPORTED_MEDIA_TYPES or media in JPEG_ALIASES:
        return [ImageInput(await request.body(), media, None)]
    if media != MULTIPART:
        raise UnsupportedContentType(
            f"send multipart/form-data with files in the field 'image', or one image as "
            f"{', '.join(SUPPORTED_MEDIA_TYPES)}; got {media or 'no content type'!r}"
        )
    try:
        form = await request.form(max_files=max_images, max_fields=16)
    except HTTPException as error:
        if "Too many files" in str(error.detail):
            raise LimitExceeded(f"at most {max_images} images per request") from None
        raise MalformedRequest(f"cannot parse the multipart body: {error.detail}") from None
    uploads = form.getlist("image")
    if not uploads:
        raise InvalidInput("no file in the form field 'image'")
    if not all(isinstance(upload, UploadFile) for upload in uploads):
        raise InvalidInput("the form field 'image' must hold files, not text")
    raw_boxes = form.get("boxes")
    if isinstance(raw_boxes, UploadFile):
        raw_boxes = (await raw_boxes.read()).decode("utf-8", errors="replace")
    boxes = parse_boxes(raw_boxes, len(uploads), max_boxes)
    return [
        ImageInput(await upload.read(), media_type(upload.content_type), image_boxes)  # type: ignore[union-attr]
        for upload, image_boxes in zip(uploads, boxes, strict=True)
    ]


def parse_boxes(text: str | None, image_count: int, max_boxes: int) -> list[list[Box] | None]:
    """The `boxes` field: JSON, one list of [x1, y1, x2, y2] per image (empty or null: whole
    image)."""
    if text is None or not text.strip():
        return [None] * image_count
    try:
        # Numbers as floats: a 5000-digit integer would exceed int()'s digit limit, and one beyond
        # the float range would overflow in float(); as floats they are inf, which the core
        # refuses as non-finite.
        value: Any = json.loads(text, parse_int=float)
    except (ValueError, RecursionError) as error:  # JSONDecodeError; nesting too deep to parse
        raise InvalidInput(f"boxes is not valid JSON: {error}"[:300]) from None
    if not isinstance(value, list) or len(value) != image_count:
        raise InvalidInput(
            f"boxes must be a JSON list with one list of boxes per image ({image_count})"
        )
    parsed: list[list[Box] | None] = []
    total = 0
    for index, image_boxes in enumerate(value):
        if image_boxes is None or image_boxes == []:
            parsed.append(None)
            continue
        if not isinstance(image_boxes, list):
            raise InvalidInput(f"boxes[{index}] must be a list of [x1, y1, x2, y2] boxes")
        total += len(image_boxes)
        if total > max_boxes:
            raise LimitExceeded(f"at most {max_boxes} boxes per request")
        parsed.append([_box(box, f"boxes[{index}][{i}]") for i, box in enumerate(image_boxes)])
    return parsed


def _box(value: Any, where: str) -> Box:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise InvalidInput(f"{where} must be [x1, y1, x2, y2] numbers, got {value!r}"[:300])
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))
