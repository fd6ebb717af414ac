"""What can go wrong with a piece of work, as domain errors: no HTTP status, no response format.

str(error) is the human message. The HTTP layer maps each class to a status and a stable code in
one table (`dipr.service.http.errors`); evaluation and training report the message.
"""

import unicodedata
from typing import Self


class DiprError(Exception):
    """Base class of the errors below."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.where: str | None = None  # set by `at`

    def at(self, where: str) -> Self:
        """The same error (class, attributes) with its message prefixed by where it happened,
        e.g. "image 2 (b.jpg): …"; the first call counts, as the innermost place is the most
        precise one. The code that raised it often cannot know which of a request's images it
        was looking at: the code that called it can, and names it on the way out."""
        if self.where is None:
            self.where = where
            self.message = f"{where}: {self.message}"
            self.args = (self.message,)
        return self


def image_place(index: int, name: str | None) -> str:
    """How a message names one image of a request: its position counted from 1 and, when the
    client gave one, its file name ("image 2 (b.jpg)"). The name is the client's text: control
    characters are dropped and it is cut short, so that it cannot forge lines in a log or swell
    the message."""
    place = f"image {index + 1}"
    if name:
        printable = "".join(c for c in name if unicodedata.category(c)[0] != "C")
        if len(printable) > 80:
            printable = printable[:79] + "…"
        if printable:
            place += f" ({printable})"
    return place


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
