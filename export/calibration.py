"""The network inputs an int8 model is calibrated on: crops of real photos, prepared exactly as the
service prepares what it is sent.

A folder holding a COCO-format keypoint file (any *.json with "annotations") gives one crop per
annotated person, as `dipr eval` crops them; a folder of photos alone gives, per photo, the crop of
the whole photo (what a request without boxes and without a detector gets) and of its middle three
quarters. Every crop is also used mirrored. The default, the fixture photos, is in every clone.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dipr.core.coco import load_keypoint_set
from dipr.core.crops import Box
from dipr.core.errors import DiprError
from dipr.core.prepare import prepare_image
from dipr.evaluation.coco_eval import person_crops

DEFAULT_CALIBRATION = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_PIXELS = 2**31  # calibration photos are the user's own: no service limit applies


class CalibrationError(DiprError):
    """The calibration folder cannot give network inputs; the message says why."""


@dataclass(frozen=True)
class CalibrationSet:
    folder: Path
    inputs: np.ndarray  # [M, H, W, 3] uint8, what the network is fed
    sha256: str  # of the inputs' pixels: two exports calibrated alike show the same hash

    @property
    def size(self) -> int:
        return len(self.inputs)


# ONNX Runtime's histogram calibration keeps every quantised tensor of every input in memory
# before it computes the ranges: MoveNet Thunder ~125 MiB per input, 4 GiB for 32.
MAX_INPUTS = 32


def calibration_set(
    folder: Path, input_size: tuple[int, int], limit: int = MAX_INPUTS
) -> CalibrationSet:
    """At most `limit` inputs (mirrors included, spread evenly over a larger set) from `folder`;
    CalibrationError when it has none."""
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder not found: {folder}")
    annotations = _annotation_file(folder)
    crops = _person_inputs(annotations, folder, input_size) if annotations else None
    if crops is None:
        crops = _photo_inputs(folder, input_size)
    if not crops:
        raise CalibrationError(f"no photos (*.jpg, *.png) or COCO keypoint annotations in {folder}")
    with_mirrors = [mirrored for crop in crops for mirrored in (crop, crop[:, ::-1])]
    chosen = np.linspace(0, len(with_mirrors) - 1, min(limit, len(with_mirrors))).round()
    inputs = np.ascontiguousarray(np.stack([with_mirrors[int(i)] for i in chosen]))
    return CalibrationSet(folder, inputs, hashlib.sha256(inputs.tobytes()).hexdigest())


def _annotation_file(folder: Path) -> Path | None:
    for candidate in sorted(folder.glob("*.json")):
        try:
            content = json.loads(candidate.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(content, dict) and "annotations" in content:
            return candidate
    return None


def _person_inputs(
    annotations: Path, folder: Path, input_size: tuple[int, int]
) -> list[np.ndarray]:
    try:
        dataset = load_keypoint_set(annotations, folder)
    except DiprError as error:
        raise CalibrationError(f"calibration set {annotations}: {error.message}") from error
    return [pixels for _, pixels in person_crops(dataset, input_size)]


def _photo_inputs(folder: Path, input_size: tuple[int, int]) -> list[np.ndarray]:
    inputs: list[np.ndarray] = []
    for photo in sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES):
        data = photo.read_bytes()
        try:
            whole = prepare_image(data, None, None, input_size, max_pixels=MAX_PIXELS)
            width, height = whole.decoded.width, whole.decoded.height
            middle: Box = (width / 8, height / 8, width * 7 / 8, height * 7 / 8)
            zoomed = prepare_image(data, None, [middle], input_size, max_pixels=MAX_PIXELS)
        except DiprError as error:
            raise CalibrationError(f"calibration photo {photo}: {error.message}") from error
        inputs += [*whole.cropped.inputs, *zoomed.cropped.inputs]
    return inputs
