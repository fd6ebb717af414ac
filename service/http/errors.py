"""Errors as HTTP answers: the one table from error class to status and code, and the JSON body.

Every answer that is not a success is `{"error": {"code", "message"}}`; `code` is a stable
snake_case name for clients to branch on. The domain errors come from `dipr.core.errors`; the
few below only exist at the HTTP edge.
"""

from dataclasses import dataclass

from fastapi.responses import JSONResponse

from dipr.core.errors import (
    DeadlineExceeded,
    DiprError,
    InferenceFailed,
    InvalidInput,
    LimitExceeded,
    NotReady,
    Overloaded,
    UndecodableImage,
    UnsupportedImage,
)


class MalformedRequest(DiprError):
    """The request body cannot be parsed (broken multipart, wrong form fields)."""


class UnsupportedContentType(DiprError):
    """The request is neither multipart/form-data nor one image."""


class Unauthorized(DiprError):
    """An API key is required and none, or a wrong one, was sent."""


@dataclass(frozen=True)
class HttpError:
    status: int
    code: str
    retry: bool = False  # answer with Retry-After: trying again later may succeed


ERRORS: dict[type[DiprError], HttpError] = {
    UndecodableImage: HttpError(400, "undecodable_image"),
    MalformedRequest: HttpError(400, "malformed_request"),
    Unauthorized: HttpError(401, "unauthorized"),
    LimitExceeded: HttpError(413, "payload_too_large"),
    UnsupportedImage: HttpError(415, "unsupported_media_type"),
    UnsupportedContentType: HttpError(415, "unsupported_media_type"),
    InvalidInput: HttpError(422, "invalid_request"),
    InferenceFailed: HttpError(500, "inference_failed"),
    Overloaded: HttpError(503, "overloaded", retry=True),
    NotReady: HttpError(503, "not_ready", retry=True),
    DeadlineExceeded: HttpError(504, "deadline_exceeded"),
}
INTERNAL = HttpError(500, "internal")
# What the OpenAPI schema says each status means.
DESCRIPTIONS = {
    400: "undecodable image or malformed body",
    401: "missing or wrong API key (when API keys are configured)",
    413: "too many bytes, pixels, images or boxes",
    415: "unsupported content or image type",
    422: "bad boxes or parameters",
    500: "inference failed",
    503: "overloaded (Retry-After) or not ready",
    504: "deadline passed",
}


def http_error(error: DiprError) -> HttpError:
    """The table's entry for the error's class or its nearest listed base."""
    for cls in type(error).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return INTERNAL


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(error: DiprError, retry_after_s: int) -> JSONResponse:
    mapped = http_error(error)
    headers = {}
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if mapped.retry:
        headers["Retry-After"] = str(retry_after_s)
    return JSONResponse(error_body(mapped.code, error.message), mapped.status, headers=headers)
