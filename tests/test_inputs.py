"""A client's first contact with /pose over real HTTP: what a plain upload sends (a raw body without
an image type), boxes for a raw body (`?boxes=`), and errors that name the upload they are about
and say what was expected."""

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.helpers.image_files import GIF89A
from tests.helpers.paths import PHOTOS
from tests.helpers.serving import running_service

HOPPER = (PHOTOS / "grace_hopper.jpg").read_bytes()  # 512×600, one person
ASTRONAUT = (PHOTOS / "astronaut.jpg").read_bytes()  # 512×512, one person


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_service(max_images=4, max_boxes=8) as base:
        yield base


def refused(response: httpx.Response, status: int, code: str) -> str:
    """The error's message, once the status and code are checked."""
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text
    return response.json()["error"]["message"]


def images(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (name, data, "image/jpeg")) for name, data in files]


def test_a_raw_octet_stream_jpeg_is_sniffed_and_its_person_found(url: str) -> None:
    response = httpx.post(
        f"{url}/pose",
        content=HOPPER,
        headers={"content-type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["image"] == {"width": 512, "height": 600}
    assert len(result["persons"]) >= 1 and "box_score" in result["persons"][0]


def test_a_raw_body_without_a_content_type_is_sniffed(url: str) -> None:
    """httpx.post(url, content=b) sends bytes with no Content-Type at all."""
    response = httpx.post(f"{url}/pose", content=HOPPER, timeout=60)
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert len(response.json()["results"][0]["persons"]) >= 1


def test_a_streamed_file_body_without_a_content_type_is_sniffed(url: str) -> None:
    """An open file as the body (as requests.post(url, data=f) sends it): chunked, untyped."""
    with (PHOTOS / "astronaut.jpg").open("rb") as photo:
        response = httpx.post(f"{url}/pose", content=photo, timeout=60)
    assert "content-type" not in response.request.headers
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["image"] == {"width": 512, "height": 512}


def test_a_gif_sent_as_octet_stream_is_415_naming_gif(url: str) -> None:
    response = httpx.post(
        f"{url}/pose", content=GIF89A, headers={"content-type": "application/octet-stream"}
    )
    message = refused(response, 415, "unsupported_media_type")
    assert message == "image 1: GIF images are not supported; send a JPEG, PNG, WebP or BMP image"


def test_a_raw_body_of_another_declared_type_is_415_saying_what_to_send(url: str) -> None:
    response = httpx.post(f"{url}/pose", content=HOPPER, headers={"content-type": "text/plain"})
    message = refused(response, 415, "unsupported_media_type")
    assert "application/octet-stream or without a content type" in message
    assert message.endswith("got 'text/plain'")


def test_boxes_in_the_query_give_a_raw_body_one_person_per_box(url: str) -> None:
    boxes = [[40, 20, 470, 512], [0, 0, 256, 256]]
    response = httpx.post(
        f"{url}/pose",
        params={"boxes": json.dumps([boxes])},
        content=ASTRONAUT,
        headers={"content-type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    persons = response.json()["results"][0]["persons"]
    assert [person["box"] for person in persons] == boxes
    assert all("box_score" not in person for person in persons)  # not the detector's


def test_render_takes_query_boxes_for_an_untyped_raw_body(url: str) -> None:
    response = httpx.post(
        f"{url}/pose/render",
        params={"boxes": "[[[40, 20, 470, 512]]]"},
        content=ASTRONAUT,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"


def test_query_boxes_on_a_multipart_request_are_422(url: str) -> None:
    response = httpx.post(
        f"{url}/pose",
        params={"boxes": "[[[40, 20, 470, 512]]]"},
        files=images(("a.jpg", ASTRONAUT)),
    )
    message = refused(response, 422, "invalid_request")
    assert "send the boxes in the form field 'boxes'" in message


def test_a_duplicate_boxes_field_is_422_not_one_of_them(url: str) -> None:
    body = (
        b"--b\r\n"
        b'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + ASTRONAUT + b"\r\n"
        b'--b\r\nContent-Disposition: form-data; name="boxes"\r\n\r\n[[[40, 20, 470, 512]]]\r\n'
        b'--b\r\nContent-Disposition: form-data; name="boxes"\r\n\r\n[[[0, 0, 10, 10]]]\r\n'
        b"--b--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=b"}
    message = refused(
        httpx.post(f"{url}/pose", content=body, headers=headers), 422, "invalid_request"
    )
    assert message.startswith("the form field 'boxes' was sent 2 times; send it once")


def test_duplicate_query_boxes_are_422(url: str) -> None:
    response = httpx.post(
        f"{url}/pose",
        params=[("boxes", "[[[40, 20, 470, 512]]]"), ("boxes", "[]")],
        content=ASTRONAUT,
    )
    message = refused(response, 422, "invalid_request")
    assert message.startswith("the query parameter ?boxes= was sent 2 times")


def test_a_truncated_second_of_three_images_is_400_naming_it(url: str) -> None:
    cut = HOPPER[: len(HOPPER) // 2]  # the header is whole: it fails while decoding
    response = httpx.post(
        f"{url}/pose",
        files=images(("a.jpg", ASTRONAUT), ("b.jpg", cut), ("c.jpg", HOPPER)),
        timeout=60,
    )
    message = refused(response, 400, "undecodable_image")
    assert message == "image 2 (b.jpg): corrupt or truncated JPEG data"


def test_an_image_refused_by_its_header_is_named(url: str) -> None:
    response = httpx.post(
        f"{url}/pose",
        files=[*images(("a.jpg", ASTRONAUT)), ("image", ("notes.txt", b"hello", "text/plain"))],
    )
    message = refused(response, 415, "unsupported_media_type")
    assert message.startswith("image 2 (notes.txt): content type 'text/plain' is not supported")


def test_a_flat_box_for_one_image_gets_the_shape_by_example(url: str) -> None:
    response = httpx.post(
        f"{url}/pose", data={"boxes": "[40, 20, 470, 512]"}, files=images(("a.jpg", ASTRONAUT))
    )
    message = refused(response, 422, "invalid_request")
    assert "boxes must be one list of [x1, y1, x2, y2] boxes per image" in message
    assert "for one image with one box send [[[x1, y1, x2, y2]]]" in message
    assert message.endswith("(here [[[40, 20, 470, 512]]])")


def test_a_coco_box_gets_the_corners_hint_naming_its_image(url: str) -> None:
    coco = [300, 20, 170, 492]  # [x, y, w, h] of the astronaut's right part: x2 < x1 as corners
    response = httpx.post(
        f"{url}/pose",
        data={"boxes": json.dumps([[], [coco]])},
        files=images(("a.jpg", ASTRONAUT), ("b.jpg", ASTRONAUT)),
    )
    message = refused(response, 422, "invalid_request")
    assert message.startswith("image 2 (b.jpg): box [300, 20, 170, 492] has no area")
    assert "not COCO [x, y, width, height]" in message
    assert message.endswith("send [300, 20, 470, 512]")
