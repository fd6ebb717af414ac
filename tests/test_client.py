"""`dipr pose` and `dipr.service.client` against a real service on loopback, and the README's
Python example, run as printed."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from dipr.benchmarks.servers import free_port
from dipr.service.client import Client, Part, ServiceError, ServiceUnreachable, encode_multipart
from tests.helpers.paths import PHOTOS
from tests.helpers.serving import running_service

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT = PHOTOS / "astronaut.jpg"  # one person, 512×512
HOPPER = PHOTOS / "grace_hopper.jpg"  # one person, 512×600
ASTRONAUT_BOX = [40.0, 20.0, 470.0, 512.0]
API_KEY = "client-test-key"

# The README's example (### Clients), exactly as printed there: standard library only.
README_EXAMPLE = """\
import json
import urllib.request

with open("photo.jpg", "rb") as photo:  # one JPEG as the request body
    request = urllib.request.Request(
        "http://127.0.0.1:8000/pose", data=photo.read(), headers={"Content-Type": "image/jpeg"}
    )
with urllib.request.urlopen(request, timeout=60) as response:
    answer = json.load(response)
for person in answer["results"][0]["persons"]:
    nose = next(k for k in person["keypoints"] if k["name"] == "nose")
    print(f"nose at ({nose['x']:.0f}, {nose['y']:.0f}), score {nose['score']:.2f}")
"""


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with running_service(max_images=4) as base:
        yield base


@pytest.fixture(scope="module")
def keyed_url() -> Iterator[str]:
    with running_service(api_keys=API_KEY, detect=False) as base:
        yield base


def dipr_pose(*arguments: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT):
    """`python -m dipr.cli pose ARGUMENTS` with no DIPR_* variable but those of `env`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIPR_")}
    return subprocess.run(
        [sys.executable, "-m", "dipr.cli", "pose", *map(str, arguments)],
        env={**environment, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def nose(person: dict) -> dict:
    return next(k for k in person["keypoints"] if k["name"] == "nose")


def inside(point: dict, box: list[float]) -> bool:
    return box[0] <= point["x"] <= box[2] and box[1] <= point["y"] <= box[3]


# The library


def test_the_library_poses_photos(url: str) -> None:
    answer = Client(url).pose([ASTRONAUT, str(HOPPER)])
    assert answer["model"]["name"] == "movenet-thunder"
    astronaut, hopper = answer["results"]
    assert astronaut["image"] == {"width": 512, "height": 512}
    assert hopper["image"] == {"width": 512, "height": 600}
    for result in (astronaut, hopper):
        assert result["persons"], "the detector found nobody"
        best = result["persons"][0]
        assert len(best["keypoints"]) == 17
        assert nose(best)["score"] > 0.3
        assert inside(nose(best), best["box"])


def test_the_library_sends_boxes_and_options(url: str) -> None:
    client = Client(url.removeprefix("http://") + "/")  # scheme and slash are optional
    answer = client.pose([("a.jpg", ASTRONAUT.read_bytes())], [[ASTRONAUT_BOX]], raw=True)
    (person,) = answer["results"][0]["persons"]
    assert person["box"] == ASTRONAUT_BOX
    assert "box_score" not in person  # no detection: the box was sent
    assert "x_raw" in person["keypoints"][0]
    (whole,) = client.pose([ASTRONAUT.read_bytes()], detect=False)["results"][0]["persons"]
    assert whole["box"] == [0.0, 0.0, 512.0, 512.0]
    nobody = client.pose([ASTRONAUT], min_score=1.0)["results"][0]["persons"]
    assert nobody == []


def test_the_library_renders_a_jpeg(url: str) -> None:
    jpeg = Client(url).render(ASTRONAUT, [[ASTRONAUT_BOX]])
    drawn = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (512, 512, 3)
    assert not np.array_equal(drawn, cv2.imread(str(ASTRONAUT)))  # something was drawn


def test_the_library_raises_the_services_error(url: str) -> None:
    with pytest.raises(ServiceError) as caught:
        Client(url).pose([ASTRONAUT], [[[10, 20]]])
    error = caught.value
    assert (error.status, error.code) == (422, "invalid_request")
    assert "boxes[0][0] must be [x1, y1, x2, y2]" in error.message
    assert str(error).startswith("422 invalid_request: ")


def test_the_library_says_when_nothing_answers() -> None:
    with pytest.raises(ServiceUnreachable, match="cannot reach the service at http://127"):
        Client(f"http://127.0.0.1:{free_port()}").pose([ASTRONAUT])
    with pytest.raises(ServiceUnreachable, match="cannot reach the service at http://no-such"):
        Client("http://no-such-host.invalid:8000").pose([ASTRONAUT])


def test_the_library_times_out() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(ServiceUnreachable, match=r"no answer from .* within 0.5 s"):
            Client(f"http://127.0.0.1:{port}", timeout_s=0.5).pose([ASTRONAUT])


class _Proxy(BaseHTTPRequestHandler):
    """What a proxy in front of the service may say: HTML, no JSON."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        page = b"<html><body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        pass


def test_an_error_that_is_not_the_services_json_still_reads() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ServiceError, match=r"502 http_error: <html>.*502 Bad Gateway"):
            Client(f"http://127.0.0.1:{server.server_address[1]}").pose([ASTRONAUT])
    finally:
        server.shutdown()
        server.server_close()


def test_the_multipart_body_parses_as_the_service_reads_it() -> None:
    """The encoder against the parser the service uses (python-multipart, via Starlette)."""
    import asyncio

    from starlette.requests import Request

    parts = [
        Part("image", b"\xff\xd8 one \r\n--", 'odd "name"\r\n.jpg', "image/jpeg"),
        Part("image", b"", "empty.png", "image/png"),
        Part("boxes", b"[[], null]"),
    ]
    body, content_type = encode_multipart(parts)

    async def parse() -> list[tuple[str, object]]:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "headers": [(b"content-type", content_type.encode())]}
        form = await Request(scope, receive).form()
        return [
            (key, (value.filename, await value.read()) if hasattr(value, "read") else value)
            for key, value in form.multi_items()
        ]

    assert asyncio.run(parse()) == [
        ("image", ("odd %22name%22%0D%0A.jpg", b"\xff\xd8 one \r\n--")),
        ("image", ("empty.png", b"")),
        ("boxes", "[[], null]"),
    ]


def test_the_client_needs_nothing_but_the_standard_library() -> None:
    """The serving install has no httpx; and the service side never imports torch."""
    code = (
        "import sys; before = set(sys.modules); import dipr.service.client; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(new - set(sys.stdlib_module_names)))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert json.loads(imported.stdout.replace("'", '"')) == ["dipr"]


# The command line


def test_dipr_pose_prints_the_answer_as_json(url: str) -> None:
    done = dipr_pose(ASTRONAUT, HOPPER, "--url", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('{\n  "model": {')  # pretty
    results = json.loads(done.stdout)["results"]
    assert [len(r["persons"]) >= 1 for r in results] == [True, True]


def test_dipr_pose_summary_and_dipr_url(url: str) -> None:
    boxes = [[ASTRONAUT_BOX, [0, 0, 100, 100]]]
    done = dipr_pose(ASTRONAUT, "--boxes", json.dumps(boxes), "--summary", env={"DIPR_URL": url})
    assert done.returncode == 0, done.stderr
    first, second = Client(url).pose([ASTRONAUT], boxes)["results"][0]["persons"]
    assert done.stdout.splitlines() == [
        f"{ASTRONAUT}  person 1  score {first['score']:.2f}  box 40 20 470 512",
        f"{ASTRONAUT}  person 2  score {second['score']:.2f}  box 0 0 100 100",
    ]
    nobody = dipr_pose(ASTRONAUT, "--min-score", "1", "--summary", "--url", url)
    assert nobody.returncode == 0, nobody.stderr
    assert nobody.stdout == f"{ASTRONAUT}  no person\n"


def test_dipr_pose_render_writes_a_jpeg(url: str, tmp_path: Path) -> None:
    out = tmp_path / "drawn.jpg"
    done = dipr_pose(HOPPER, "--render", out, "--url", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert f"wrote {out}" in done.stderr
    drawn = cv2.imdecode(np.frombuffer(out.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == (600, 512, 3)


def test_dipr_pose_render_takes_one_photo(url: str, tmp_path: Path) -> None:
    done = dipr_pose(ASTRONAUT, HOPPER, "--render", tmp_path / "x.jpg", "--url", url)
    assert done.returncode == 2
    assert done.stderr == "dipr pose: --render draws one photo\n"
    assert not (tmp_path / "x.jpg").exists()


def services_error(url: str, files: list[tuple[str, bytes]], boxes: str | None = None) -> str:
    """The service's own answer to these files, as `dipr pose` should print it."""
    answer = httpx.post(
        f"{url}/pose",
        files=[("image", file) for file in files],
        data={} if boxes is None else {"boxes": boxes},
        timeout=60,
    )
    error = answer.json()["error"]
    return f"dipr pose: {answer.status_code} {error['code']}: {error['message']}\n"


def test_dipr_pose_exits_with_the_services_message(url: str, tmp_path: Path) -> None:
    gif = tmp_path / "anim.gif"
    gif.write_bytes(b"GIF89a" + bytes(64))
    done = dipr_pose(gif, "--url", url)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == services_error(url, [("anim.gif", gif.read_bytes())])
    assert done.stderr.startswith("dipr pose: 415 unsupported_media_type: ")
    bad_boxes = dipr_pose(ASTRONAUT, HOPPER, "--boxes", "[[]]", "--url", url)
    assert bad_boxes.returncode == 1
    photos = [(p.name, p.read_bytes()) for p in (ASTRONAUT, HOPPER)]
    assert bad_boxes.stderr == services_error(url, photos, "[[]]")
    assert bad_boxes.stderr.startswith("dipr pose: 422 invalid_request: ")


def test_dipr_pose_says_when_nothing_answers(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = dipr_pose(ASTRONAUT, "--url", url)
    assert done.returncode == 1
    assert done.stderr == f"dipr pose: cannot reach the service at {url}/pose: Connection refused\n"
    assert done.stdout == ""


def test_dipr_pose_refuses_bad_arguments_before_posting(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing there: never reached
    missing = dipr_pose(tmp_path / "none.jpg", "--url", url)
    assert missing.returncode == 2
    assert (
        missing.stderr
        == f"dipr pose: cannot read {tmp_path / 'none.jpg'}: No such file or directory\n"
    )
    bad_json = dipr_pose(ASTRONAUT, "--boxes", "[[1, 2", "--url", url)
    assert bad_json.returncode == 2
    assert bad_json.stderr.startswith("dipr pose: --boxes is not valid JSON: ")
    assert "Traceback" not in missing.stderr + bad_json.stderr


def test_dipr_pose_sends_the_api_key(keyed_url: str) -> None:
    refused = dipr_pose(ASTRONAUT, "--url", keyed_url, "--api-key", "wrong")
    assert refused.returncode == 1
    assert refused.stderr == "dipr pose: 401 unauthorized: missing or wrong API key\n"
    for env, flags in (({"DIPR_API_KEY": API_KEY}, []), ({}, ["--api-key", API_KEY])):
        done = dipr_pose(ASTRONAUT, "--url", keyed_url, "--summary", *flags, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{ASTRONAUT}  person 1  score ")


def test_dipr_pose_reads_stdin_and_renders_to_stdout(url: str) -> None:
    with ASTRONAUT.open("rb") as photo:
        done = subprocess.run(
            [sys.executable, "-m", "dipr.cli", "pose", "-", "--render", "-", "--url", url],
            stdin=photo,
            capture_output=True,
            cwd=ROOT,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert cv2.imdecode(np.frombuffer(done.stdout, np.uint8), cv2.IMREAD_COLOR).shape == (
        512,
        512,
        3,
    )


# The README's example


def test_the_readme_example_prints_each_persons_nose(url: str, tmp_path: Path) -> None:
    assert README_EXAMPLE.count("http://127.0.0.1:8000") == 1
    script = tmp_path / "example.py"
    script.write_text(README_EXAMPLE.replace("http://127.0.0.1:8000", url))  # only the port
    shutil.copy(ASTRONAUT, tmp_path / "photo.jpg")
    done = subprocess.run(
        [sys.executable, script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    persons = Client(url).pose([ASTRONAUT])["results"][0]["persons"]
    assert persons
    assert done.stdout.splitlines() == [
        f"nose at ({k['x']:.0f}, {k['y']:.0f}), score {k['score']:.2f}" for k in map(nose, persons)
    ]
    assert re.match(r"nose at \((\d+), (\d+)\), score (0\.\d\d)$", done.stdout.splitlines()[0])


def test_the_example_is_the_readmes() -> None:
    readme = (ROOT / "README.md").read_text()
    if "### Clients" not in readme:
        pytest.skip("README.md has no '### Clients' section yet")
    section = readme.split("### Clients", 1)[1]
    printed = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert printed == README_EXAMPLE
