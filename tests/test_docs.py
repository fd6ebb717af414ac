"""The API's documentation over real HTTP: /docs (Swagger UI) and /redoc (ReDoc) with every asset
served by the service itself (nothing from a CDN), public even when API keys are required, and an
OpenAPI schema whose examples are real answers and whose request form, filled in the way Swagger
UI's "Try it out" fills it, is a request the service answers with 200.
"""

import json
import re
from collections.abc import Iterator
from typing import Any

import cv2
import httpx
import numpy as np
import pytest

from dipr.service.http.responses import ErrorResponse, Health, ModelDetails, PoseResponse
from tests.helpers.paths import PHOTOS
from tests.helpers.serving import running_service

PHOTO = (PHOTOS / "astronaut.jpg").read_bytes()
# What each kind of asset must be served as, and at least how large it is (the real files are
# 1.5 MB and 1.1 MB of JavaScript, 179 kB of CSS, 5 kB of PNG; an error page is far smaller).
KINDS = {
    ".js": ("text/javascript", 500_000),
    ".css": ("text/css", 50_000),
    ".png": ("image/png", 1_000),
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_service() as base:
        yield base


@pytest.fixture(scope="module")
def schema(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/openapi.json", timeout=30).json()


def referenced(html: str) -> list[str]:
    """Every URL a page loads: link hrefs, script srcs, and the schema URL it is given."""
    urls = re.findall(r"""(?:href|src|spec-url)=["']([^"']+)["']""", html)
    urls += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)  # SwaggerUIBundle({url: ...})
    return urls


@pytest.mark.parametrize(
    ("page", "scripts"),
    [("/docs", {"swagger-ui-bundle.js"}), ("/redoc", {"redoc.standalone.js"})],
)
def test_a_docs_page_loads_only_local_assets(url: str, page: str, scripts: set[str]) -> None:
    response = httpx.get(f"{url}{page}", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # Not one absolute URL: no CDN, no web fonts, no favicon from elsewhere.
    assert not re.search(r"(?i)(https?:)?//[a-z0-9]", html), html
    urls = referenced(html)
    assert "/openapi.json" in urls
    assets = [u for u in urls if u != "/openapi.json"]
    assert scripts <= {u.rsplit("/", 1)[-1] for u in assets}, assets
    for asset in assets:
        assert asset.startswith("/"), asset
        served = httpx.get(f"{url}{asset}", timeout=30)
        assert served.status_code == 200, asset
        kind, least = KINDS[asset[asset.rindex(".") :]]
        assert served.headers["content-type"].split(";")[0] == kind, asset
        assert len(served.content) >= least, (asset, len(served.content))
    if page == "/docs":
        css = httpx.get(f"{url}/docs/assets/swagger-ui.css", timeout=30).text
        assert ".swagger-ui" in css
    bundle = httpx.get(f"{url}{next(a for a in assets if a.endswith('.js'))}", timeout=30).text
    assert ("SwaggerUIBundle" if page == "/docs" else "Redoc") in bundle


def test_only_the_listed_assets_are_served(url: str) -> None:
    for path in ["/docs/assets/core.py", "/docs/assets/..%2F..%2Fpyproject.toml", "/docs/x"]:
        response = httpx.get(f"{url}{path}", timeout=30)
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_the_docs_are_public_when_api_keys_are_required() -> None:
    with running_service(api_keys=["the-key"]) as keyed:
        assert httpx.get(f"{keyed}/v1/model", timeout=30).status_code == 401
        for page in ["/docs", "/redoc"]:
            response = httpx.get(f"{keyed}{page}", timeout=30)
            assert response.status_code == 200
            for asset in referenced(response.text):
                assert httpx.get(f"{keyed}{asset}", timeout=30).status_code == 200, asset


def test_the_docs_routes_are_not_in_the_schema(schema: dict[str, Any]) -> None:
    assert not [path for path in schema["paths"] if path.startswith(("/docs", "/redoc"))]


def json_example(response: dict[str, Any]) -> Any:
    return response["content"]["application/json"]["example"]


def test_the_pose_example_is_an_answer_of_the_schema(schema: dict[str, Any]) -> None:
    example = json_example(schema["paths"]["/pose"]["post"]["responses"]["200"])
    assert schema["components"]["schemas"]["PoseResponse"]["examples"] == [example]
    PoseResponse.model_validate(example)  # every field of the right type, tuples of their length
    input_size = example["model"]["input_size"]
    assert len(input_size) == 2 and all(isinstance(v, int) and v > 0 for v in input_size)
    persons = [p for image in example["results"] for p in image["persons"]]
    assert persons
    for person in persons:
        x1, y1, x2, y2 = person["box"]
        assert all(isinstance(v, int | float) for v in person["box"]) and x1 < x2 and y1 < y2
        assert len(person["keypoints"]) == 17


def test_the_model_and_health_examples_are_answers_of_the_schema(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    example = json_example(paths["/v1/model"]["get"]["responses"]["200"])
    assert ModelDetails.model_validate(example).input_size == (256, 256)
    assert all(len(pair) == 2 for pair in example["skeleton"])
    Health.model_validate(json_example(paths["/health/live"]["get"]["responses"]["200"]))
    Health.model_validate(json_example(paths["/health/ready"]["get"]["responses"]["503"]))


def test_each_error_status_shows_its_own_codes(schema: dict[str, Any]) -> None:
    responses = schema["paths"]["/pose"]["post"]["responses"]
    codes = {}
    for status, response in responses.items():
        if status == "200":
            continue
        examples = response["content"]["application/json"]["examples"]
        for named in examples.values():
            ErrorResponse.model_validate(named["value"])
        codes[status] = {named["value"]["error"]["code"] for named in examples.values()}
    assert codes["413"] == {"payload_too_large"}
    assert codes["422"] == {"invalid_request"}
    assert codes["503"] == {"overloaded", "not_ready"}


def tuples(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "prefixItems" in node:
            yield where, node
        for key, value in node.items():
            yield from tuples(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from tuples(value, f"{where}/{index}")


def test_every_tuple_of_the_schema_has_an_example_of_its_length(schema: dict[str, Any]) -> None:
    """Swagger UI samples a tuple (prefixItems) as [null, null] unless the schema gives an
    example: each one does, of the tuple's length and item types."""
    found = list(tuples(schema["components"]))
    assert len(found) >= 4  # input_size (×3), box, skeleton's pairs
    for where, node in found:
        if where.endswith("/items"):  # a tuple inside a list: the list's example covers it
            continue
        assert node.get("examples"), where
        for example in node["examples"]:
            assert len(example) == len(node["prefixItems"]), where
            for value, item in zip(example, node["prefixItems"], strict=True):
                kind = {"integer": int, "number": int | float}[item["type"]]
                assert isinstance(value, kind) and not isinstance(value, bool), where


def try_it_out_value(prop: dict[str, Any]) -> Any:
    """What Swagger UI's "Try it out" puts in a form field before anyone edits it: a file input
    for binary strings, else the schema's example, else its default, else a made-up sample
    ("string" for a string)."""
    if prop.get("format") == "binary":
        return "file"
    if prop.get("type") == "array":
        return [try_it_out_value(prop["items"])]
    if "examples" in prop:
        return prop["examples"][0]
    if "example" in prop:
        return prop["example"]
    if "default" in prop:
        return prop["default"]
    return {"string": "string", "integer": 0, "number": 0, "boolean": True}[prop["type"]]


@pytest.mark.parametrize("path", ["/pose", "/pose/render"])
def test_try_it_out_as_swagger_ui_fills_the_form_gets_200(
    url: str, schema: dict[str, Any], path: str
) -> None:
    """The multipart form as "Try it out" starts it (one file chosen, nothing else touched) and a
    raw body of each image type the schema lists, each with a file of that type."""
    body = schema["paths"][path]["post"]["requestBody"]["content"]
    form_schema = body["multipart/form-data"]["schema"]
    files: list[tuple[str, tuple[str, bytes, str]]] = []
    data: dict[str, str] = {}
    for name, prop in form_schema["properties"].items():
        value = try_it_out_value(prop)
        if value == "file" or value == ["file"]:
            files.append((name, ("astronaut.jpg", PHOTO, "image/jpeg")))
        else:
            # Swagger UI sends a non-required field even empty ("Send empty value" is checked).
            data[name] = value if isinstance(value, str) else json.dumps(value)
    assert data == {"boxes": ""}  # not "string", which the service would refuse
    response = httpx.post(f"{url}{path}", files=files, data=data, timeout=60)
    assert response.status_code == 200, response.text
    raw_types = [media for media in body if media.startswith("image/")]
    assert set(raw_types) == {"image/jpeg", "image/png", "image/webp", "image/bmp"}
    for media in raw_types:
        image = encoded(media.removeprefix("image/"))
        answer = httpx.post(
            f"{url}{path}", content=image, headers={"content-type": media}, timeout=60
        )
        assert answer.status_code == 200, (media, answer.text)


def encoded(fmt: str) -> bytes:
    bgr = cv2.imdecode(np.frombuffer(PHOTO, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(f".{'jpg' if fmt == 'jpeg' else fmt}", bgr)[1].tobytes()


def shape(value: Any) -> Any:
    """A JSON value's structure: the keys of objects, recursively, and of a list's first item."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__.replace("int", "number").replace("float", "number")


def test_the_pose_example_has_the_shape_of_a_real_answer(url: str, schema: dict[str, Any]) -> None:
    """The example is the default model's answer for astronaut.jpg, sent without boxes."""
    example = json_example(schema["paths"]["/pose"]["post"]["responses"]["200"])
    response = httpx.post(
        f"{url}/pose", files=[("image", ("astronaut.jpg", PHOTO, "image/jpeg"))], timeout=60
    )
    assert response.status_code == 200
    real = response.json()
    assert shape(real) == shape(example)
    assert real["model"] == example["model"]
    (person,) = real["results"][0]["persons"]
    (shown,) = example["results"][0]["persons"]
    # Else update responses.POSE_EXAMPLE: it is this answer, rounded.
    assert person["box"] == pytest.approx(shown["box"], abs=3.0)
    assert [k["name"] for k in person["keypoints"]] == [k["name"] for k in shown["keypoints"]]
