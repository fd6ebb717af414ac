"""`dipr pose`: post photos to a running service and print its answer (standard library only).

The serving install has no HTTP client package, so this speaks HTTP with urllib and encodes
multipart/form-data itself. `Client` is the library; `add_parser` wires `dipr pose` into the
console script. Nothing here imports numpy, the runtime or torch.
"""

import argparse
import http.client
import json
import mimetypes
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 60.0  # above the service's default request deadline (30 s)
USER_AGENT = "dipr-client/1"

# A photo: a path, its bytes, or (name, bytes); the name only labels the upload.
Photo = str | os.PathLike[str] | bytes | tuple[str, bytes]
# The service's `boxes` field: one list of [x1, y1, x2, y2] pixel boxes per photo (None or []:
# let the service find the persons).
Boxes = Sequence[Sequence[Sequence[float]] | None]


class ClientError(Exception):
    """Anything that kept a request from getting a usable answer."""


class ServiceError(ClientError):
    """The service answered 4xx or 5xx; `code` is its stable error name (`error.code`)."""

    def __init__(
        self, status: int, code: str, message: str, retry_after: str | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        text = f"{status} {code}: {message}"
        if retry_after is not None:
            text += f" (retry after {retry_after} s)"
        super().__init__(text)


class ServiceUnreachable(ClientError):
    """No HTTP answer at all: refused, unknown host, timed out, connection dropped."""


@dataclass(frozen=True)
class Part:
    """One field of a multipart/form-data body."""

    name: str
    content: bytes
    filename: str | None = None
    content_type: str | None = None


def encode_multipart(parts: Sequence[Part]) -> tuple[bytes, str]:
    """The body and its Content-Type header value."""
    boundary = f"dipr-{secrets.token_hex(16)}"
    while any(boundary.encode() in part.content for part in parts):  # a 2^-128 chance
        boundary = f"dipr-{secrets.token_hex(16)}"
    chunks: list[bytes] = []
    for part in parts:
        disposition = f'form-data; name="{_quote(part.name)}"'
        if part.filename is not None:
            disposition += f'; filename="{_quote(part.filename)}"'
        header = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if part.content_type is not None:
            header += f"Content-Type: {part.content_type}\r\n"
        chunks += [header.encode(), b"\r\n", part.content, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def _quote(value: str) -> str:
    """A name or file name inside a quoted header parameter (as browsers escape it)."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _load(photo: Photo) -> tuple[str, bytes]:
    if isinstance(photo, tuple):
        return photo
    if isinstance(photo, bytes):
        return "image", photo
    path = Path(photo)
    return path.name, path.read_bytes()


def _image_part(photo: Photo) -> Part:
    name, content = _load(photo)
    guessed, _ = mimetypes.guess_type(name)
    # The service decides the format from the bytes; the declared type only has to be plausible.
    return Part("image", content, name, guessed or "application/octet-stream")


@dataclass(frozen=True)
class Client:
    """A running dipr service: `Client("http://host:8000").pose(["a.jpg"])`."""

    url: str = DEFAULT_URL
    api_key: str | None = None  # sent as Authorization: Bearer
    timeout_s: float = DEFAULT_TIMEOUT_S

    def pose(
        self,
        photos: Sequence[Photo],
        boxes: Boxes | None = None,
        *,
        detect: bool | None = None,
        min_score: float | None = None,
        raw: bool = False,
    ) -> dict[str, Any]:
        """POST /pose: the service's JSON answer (`model`, and `results` in photo order)."""
        body, _ = self._post("/pose", photos, boxes, detect, min_score, raw)
        try:
            answer = json.loads(body)
        except ValueError:
            raise ClientError(f"the answer of {self._endpoint('/pose')} is not JSON") from None
        if not isinstance(answer, dict) or "results" not in answer:
            raise ClientError(f"the answer of {self._endpoint('/pose')} is not a pose answer")
        return answer

    def render(
        self,
        photo: Photo,
        boxes: Boxes | None = None,
        *,
        detect: bool | None = None,
        min_score: float | None = None,
    ) -> bytes:
        """POST /pose/render: the photo as JPEG with every person's box and skeleton drawn.
        `boxes` as for `pose`, one list per photo: `[[[x1, y1, x2, y2], …]]`."""
        body, content_type = self._post("/pose/render", [photo], boxes, detect, min_score)
        if not body.startswith(b"\xff\xd8"):
            raise ClientError(
                f"the answer of {self._endpoint('/pose/render')} is not a JPEG ({content_type})"
            )
        return body

    def _endpoint(self, path: str) -> str:
        base = self.url if "://" in self.url else f"http://{self.url}"
        return base.rstrip("/") + path

    def _post(
        self,
        path: str,
        photos: Sequence[Photo],
        boxes: Boxes | None,
        detect: bool | None,
        min_score: float | None,
        raw: bool = False,
    ) -> tuple[bytes, str]:
        parts = [_image_part(photo) for photo in photos]
        if boxes is not None:
            parts.append(Part("boxes", json.dumps(boxes).encode()))
        body, content_type = encode_multipart(parts)
        query: dict[str, str] = {}
        if detect is not None:
            query["detect"] = str(detect).lower()
        if min_score is not None:
            query["min_score"] = repr(float(min_score))
        if raw:
            query["raw"] = "true"
        url = self._endpoint(path)
        if query:
            url += "?" + urllib.parse.urlencode(query)
        headers = {"Content-Type": content_type, "User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:  # an answer, 4xx or 5xx
            with error:
                try:
                    body = error.read()
                except (OSError, http.client.HTTPException):
                    body = b""  # the status says enough
            raise _service_error(error.code, error.reason, error.headers, body) from None
        except urllib.error.URLError as error:  # no answer: refused, unknown host, …
            raise ServiceUnreachable(self._unreachable(url, error.reason)) from None
        except (OSError, http.client.HTTPException) as error:  # timed out, dropped mid-answer
            raise ServiceUnreachable(self._unreachable(url, error)) from None

    def _unreachable(self, url: str, reason: object) -> str:
        if isinstance(reason, TimeoutError):
            return f"no answer from {url} within {self.timeout_s:g} s"
        if isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror
        return f"cannot reach the service at {url}: {str(reason) or type(reason).__name__}"


def _service_error(status: int, reason: str, headers: Any, body: bytes) -> ServiceError:
    """The service's `{"error": {"code", "message"}}`, or what a proxy in front said instead."""
    retry_after = headers.get("Retry-After") if headers is not None else None
    try:
        error = json.loads(body)["error"]
        return ServiceError(status, str(error["code"]), str(error["message"]), retry_after)
    except (ValueError, KeyError, TypeError):
        pass
    try:  # FastAPI's own answers (an unknown path: 404, {"detail": "Not Found"})
        detail = json.loads(body)["detail"]
        return ServiceError(status, "http_error", str(detail), retry_after)
    except (ValueError, KeyError, TypeError):
        pass
    text = " ".join(body.decode("utf-8", errors="replace").split())[:200]
    return ServiceError(status, "http_error", text or str(reason), retry_after)


# `dipr pose`


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pose",
        help="pose photos with a running service (dipr serve)",
        description="Post photos to a running dipr service's POST /pose and print its JSON "
        "answer, or draw the poses of one photo with --render. Exit status: 0 answered, 1 the "
        "service answered an error or could not be reached, 2 bad arguments.",
    )
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files ('-': stdin)")
    parser.add_argument(
        "--url",
        default=os.environ.get("DIPR_URL", DEFAULT_URL),
        help=f"the service (DIPR_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("DIPR_API_KEY") or None,
        help="sent as Authorization: Bearer (DIPR_API_KEY, which stays out of the process list)",
    )
    parser.add_argument(
        "--boxes",
        metavar="JSON",
        help="one list of [x1, y1, x2, y2] pixel boxes per photo, e.g. "
        "'[[[10,20,200,400]],[]]' (default: the service finds the persons)",
    )
    parser.add_argument(
        "--render",
        metavar="OUT",
        help="post the (one) photo to /pose/render and write the drawn JPEG to OUT ('-': stdout)",
    )
    parser.add_argument(
        "--summary", action="store_true", help="one line per person instead of the JSON"
    )
    parser.add_argument(
        "--min-score", type=float, metavar="S", help="the detector's threshold, 0 to 1"
    )
    parser.add_argument(
        "--no-detect",
        dest="detect",
        action="store_const",
        const=False,
        help="no person detection: a photo without boxes is one whole-image crop",
    )
    parser.add_argument("--raw", action="store_true", help="add x_raw, y_raw (JSON only)")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        photos = [_read_photo(name) for name in args.photos]
    except (OSError, ValueError) as error:  # ValueError: a NUL in the name
        return _fail(
            f"cannot read {getattr(error, 'filename', None) or 'a photo'}: "
            f"{getattr(error, 'strerror', None) or error}",
            2,
        )
    try:
        boxes = None if args.boxes is None else json.loads(args.boxes)
    except ValueError as error:
        return _fail(f"--boxes is not valid JSON: {error}", 2)
    if args.render is not None and len(photos) != 1:
        return _fail("--render draws one photo", 2)
    client = Client(args.url, args.api_key, args.timeout)
    options = {"detect": args.detect, "min_score": args.min_score}
    try:
        if args.render is not None:
            jpeg = client.render(photos[0], boxes, **options)
        else:
            answer = client.pose(photos, boxes, raw=args.raw, **options)
    except ClientError as error:
        return _fail(str(error), 1)
    if args.render is None:
        print(summary(args.photos, answer) if args.summary else json.dumps(answer, indent=2))
        return 0
    if args.render == "-":
        sys.stdout.buffer.write(jpeg)
        return 0
    try:
        Path(args.render).write_bytes(jpeg)
    except OSError as error:
        return _fail(f"cannot write {args.render}: {error.strerror}", 1)
    print(f"wrote {args.render} ({len(jpeg)} bytes)", file=sys.stderr)
    return 0


def summary(names: Sequence[str], answer: dict[str, Any]) -> str:
    """One line per person: photo, person number, score, box; one line for a photo without any."""
    lines = []
    for name, result in zip(names, answer["results"], strict=True):
        if not result["persons"]:
            lines.append(f"{name}  no person")
        for number, person in enumerate(result["persons"], 1):
            box = " ".join(f"{v:.0f}" for v in person["box"])
            lines.append(f"{name}  person {number}  score {person['score']:.2f}  box {box}")
    return "\n".join(lines)


def _read_photo(name: str) -> tuple[str, bytes]:
    """(file name, bytes): the name labels the upload, without the folders."""
    if name == "-":
        return "stdin", sys.stdin.buffer.read()
    path = Path(name)
    return path.name, path.read_bytes()


def _fail(message: str, status: int) -> int:
    print(f"dipr pose: {message}", file=sys.stderr)
    return status
