"""The service's errors, independent of HTTP.

Each class carries the HTTP status it is meant to become (`status`) and a stable snake_case `code`
for clients to branch on; str(error) is the human message. The HTTP layer does the mapping, so the
decoding and inference code can raise these without knowing about requests or responses.
"""


class ServiceError(Exception):
    """Base class: anything unexpected is an internal error."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UndecodableImage(ServiceError):
    """The bytes are not a readable image (empty, corrupt, truncated, not an image at all)."""

    status = 400
    code = "undecodable_image"


class PayloadTooLarge(ServiceError):
    """Too many bytes, pixels, images or boxes."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """A content type or an image format the service does not accept."""

    status = 415
    code = "unsupported_media_type"


class InvalidRequest(ServiceError):
    """Well-formed but unusable request: bad boxes or parameters."""

    status = 422
    code = "invalid_request"


class Overloaded(ServiceError):
    """Too much work queued; the client should retry after `retry_after` seconds."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(ServiceError):
    """The request's time budget ran out before a result was ready."""

    status = 504
    code = "deadline_exceeded"


class InferenceFailed(ServiceError):
    """The model runtime raised or returned something unusable."""

    status = 500
    code = "inference_failed"


class NotReady(ServiceError):
    """The model is not loaded (yet, or any more)."""

    status = 503
    code = "not_ready"


class MalformedRequest(ServiceError):
    """The request body cannot be parsed (broken multipart, wrong form fields)."""

    status = 400
    code = "malformed_request"


class Unauthorized(ServiceError):
    """An API key is required and none, or a wrong one, was sent."""

    status = 401
    code = "unauthorized"
