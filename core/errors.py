"""What can go wrong with a piece of work, as domain errors: no HTTP status, no response format.

str(error) is the human message. The HTTP layer maps each class to a status and a stable code in
one table (`dipr.service.http.errors`); evaluation and training report the message.
"""


class DiprError(Exception):
    """Base class of the errors below."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the input ------------------------------------------------------------------------------------


class UndecodableImage(DiprError):
    """The bytes are not a readable image (empty, corrupt, truncated, not an image at all)."""


class UnsupportedImage(DiprError):
    """A declared media type or an image format that is not accepted (GIF, TIFF, SVG, …)."""


class LimitExceeded(DiprError):
    """Too much of something: bytes, pixels, images or boxes."""


class InvalidInput(DiprError):
    """Well-formed but unusable: a box that has no area or lies outside its image, a bad option."""


# --- the work -------------------------------------------------------------------------------------


class Overloaded(DiprError):
    """Too much work is queued to accept more now; trying again later may succeed."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause  # what had no room: "decode_budget", "pose_queue", …


class DeadlineExceeded(DiprError):
    """The work's time budget ran out before a result was ready."""


class InferenceFailed(DiprError):
    """The model runtime raised or returned something unusable."""


class NotReady(DiprError):
    """No model is loaded (yet, or any more), or the service is shutting down."""


# --- the model file -------------------------------------------------------------------------------


class ModelError(DiprError):
    """A model file is missing, unreadable, or does not follow the dipr ONNX contract."""
