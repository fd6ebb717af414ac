"""Domain errors carry no status; the HTTP edge maps each, in one table, to a status and a code."""

import json

import pytest

from dipr.core import errors as core_errors
from dipr.core.errors import (
    DeadlineExceeded,
    DiprError,
    InferenceFailed,
    InvalidInput,
    LimitExceeded,
    ModelError,
    NotReady,
    Overloaded,
    UndecodableImage,
    UnsupportedImage,
)
from dipr.service.http.errors import (
    DESCRIPTIONS,
    ERRORS,
    MalformedRequest,
    Unauthorized,
    UnsupportedContentType,
    error_response,
    http_error,
)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UndecodableImage, 400, "undecodable_image"),
        (MalformedRequest, 400, "malformed_request"),
        (Unauthorized, 401, "unauthorized"),
        (LimitExceeded, 413, "payload_too_large"),
        (UnsupportedImage, 415, "unsupported_media_type"),
        (UnsupportedContentType, 415, "unsupported_media_type"),
        (InvalidInput, 422, "invalid_request"),
        (InferenceFailed, 500, "inference_failed"),
        (Overloaded, 503, "overloaded"),
        (NotReady, 503, "not_ready"),
        (DeadlineExceeded, 504, "deadline_exceeded"),
        (ModelError, 500, "internal"),  # never reaches a client: it makes the service unready
        (DiprError, 500, "internal"),
    ],
)
def test_each_error_has_its_status_and_code(error, status, code):
    raised = (
        Overloaded("something went wrong", cause="pose_queue")
        if error is Overloaded
        else error("something went wrong")
    )
    mapped = http_error(raised)
    assert (mapped.status, mapped.code) == (status, code)
    response = error_response(raised, retry_after_s=7)
    assert response.status_code == status
    assert json.loads(response.body) == {"error": {"code": code, "message": "something went wrong"}}
    assert response.headers.get("retry-after") == ("7" if status == 503 else None)
    assert (response.headers.get("www-authenticate") == "Bearer") == (error is Unauthorized)


def test_the_domain_errors_know_nothing_of_http():
    for name in dir(core_errors):
        cls = getattr(core_errors, name)
        if isinstance(cls, type) and issubclass(cls, DiprError):
            assert not {"status", "code", "retry_after"} & set(vars(cls)), cls


def test_a_subclass_maps_like_its_base():
    class Truncated(UndecodableImage):
        pass

    assert http_error(Truncated("cut")).status == 400


def test_every_status_of_the_table_is_documented():
    assert {entry.status for entry in ERRORS.values()} <= set(DESCRIPTIONS)
