"""POST /pose's lean path (issue #16) against what it replaces: the JSON written directly equals
what PoseResponse serialised, and the shortcut that serves the route without FastAPI's routing
and dependency solving checks the API key and the query exactly as the documented route does."""

import json

import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from dipr.core.errors import DiprError
from dipr.core.pose_contract import ModelInfo
from dipr.service.http.errors import http_error
from dipr.service.http.responses import PoseResponse, pose_json
from dipr.service.http.routes import pose_router
from dipr.service.http.shortcut import PoseShortcut
from dipr.service.pipeline import ImagePoses, PersonPose
from dipr.service.runtime import Runtime
from dipr.service.settings import Settings

NAMES = ("nose", "left_eye", "right_eye")
MODEL = ModelInfo("m", "1", (256, 192), NAMES, ((0, 1),), True, "5", "person", "7", (), {})


def person(box_score: float | None, keypoints: np.ndarray | None = None) -> PersonPose:
    rng = np.random.default_rng(1)
    points = rng.uniform(-5, 300, (3, 2)) if keypoints is None else keypoints
    return PersonPose(
        box=(1.5, 2.0, 100.25, 200.0),
        score=0.5,
        keypoints=points,
        keypoints_raw=points + np.float32(0.25),
        scores=rng.uniform(0, 1, 3).astype(np.float32),
        box_score=box_score,
    )


def as_pydantic_wrote_it(results: list[ImagePoses], raw: bool) -> dict:
    """What the route answered before: PoseResponse, None fields left out."""
    answer = {
        "model": {"name": "m", "version": "1", "input_size": [256, 192], "debias": True},
        "results": [
            {
                "image": {"width": r.width, "height": r.height},
                "persons": [
                    {
                        "box": p.box,
                        "box_score": p.box_score,
                        "score": p.score,
                        "keypoints": [
                            {
                                "name": name,
                                "x": float(p.keypoints[k, 0]),
                                "y": float(p.keypoints[k, 1]),
                                "score": float(p.scores[k]),
                                "x_raw": float(p.keypoints_raw[k, 0]) if raw else None,
                                "y_raw": float(p.keypoints_raw[k, 1]) if raw else None,
                            }
                            for k, name in enumerate(NAMES)
                        ],
                    }
                    for p in r.persons
                ],
            }
            for r in results
        ],
    }
    return json.loads(PoseResponse.model_validate(answer).model_dump_json(exclude_none=True))


@pytest.mark.parametrize("raw", [False, True])
def test_the_json_is_what_the_response_model_wrote(raw: bool) -> None:
    results = [
        ImagePoses(640, 480, [person(None), person(0.75)]),
        ImagePoses(10, 20, []),
    ]
    written = pose_json(results, MODEL, raw)
    assert json.loads(written) == as_pydantic_wrote_it(results, raw)
    PoseResponse.model_validate_json(written)  # and it fits the schema


def test_non_finite_coordinates_are_null_and_bad_scores_fail_as_validation_did() -> None:
    points = np.array([[np.inf, 1.0], [2.0, np.nan], [3.0, 4.0]])
    results = [ImagePoses(640, 480, [person(None, points)])]
    assert json.loads(pose_json(results, MODEL, False)) == as_pydantic_wrote_it(results, False)
    broken = person(None)
    broken.scores[0] = 1.5
    with pytest.raises(ValueError, match="outside"):
        pose_json([ImagePoses(640, 480, [broken])], MODEL, False)


def client(router_served: bool, api_keys: list[bytes]) -> TestClient:
    """POST /pose through the shortcut, or through the documented route, with an unloaded runtime
    (a request that passes the checks is answered 503 not_ready), the errors as the app words
    them."""
    app = FastAPI()
    app.state.runtime = Runtime(Settings())
    app.state.api_keys = api_keys
    app.include_router(pose_router)
    if router_served:
        app.add_middleware(PoseShortcut)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse([[list(e["loc"]), e["msg"]] for e in error.errors()], 422)

    @app.exception_handler(DiprError)
    async def refused(request: Request, error: DiprError) -> JSONResponse:
        return JSONResponse(http_error(error).code, http_error(error).status)

    return TestClient(app)


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {}),
        ("?detect=false&raw=true", {}),
        ("?detect=maybe", {}),
        ("?min_score=2", {}),
        ("?min_score=-1&detect=x&raw=", {}),
        ("?min_score=abc", {"Authorization": "Bearer k1"}),
        ("?min_score=0.3&min_score=7", {}),
        ("?other=1&detect=1", {}),
    ],
)
@pytest.mark.parametrize("keys", [[], [b"k1"]])
def test_the_served_route_checks_as_the_documented_one(
    query: str, headers: dict[str, str], keys: list[bytes]
) -> None:
    answers = []
    for served in (True, False):
        response = client(served, keys).post(
            f"/pose{query}", content=b"\xff\xd8\xff", headers=headers
        )
        answers.append((response.status_code, response.json()))
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    "headers",
    [{"X-API-Key": "k1"}, {"Authorization": "Bearer k1"}, {"Authorization": "Basic k1"}, {}],
)
def test_the_served_route_takes_the_same_keys(headers: dict[str, str]) -> None:
    statuses = [
        client(served, [b"k1"]).post("/pose", content=b"", headers=headers).status_code
        for served in (True, False)
    ]
    assert statuses[0] == statuses[1]
