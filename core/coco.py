"""COCO-format keypoint sets: the one loader that `dipr eval` and `dipr train` share.

A person is a non-crowd annotation of the person category with 17 keypoints, at least one of them
labelled (v > 0), and a box of at least 1×1 pixel. Persons are sorted by image, then annotation
id, so that each image is read once and runs are reproducible.

Coordinates: COCO's are continuous (pixel edges at integers, the centre of the first pixel is
0.5); this project's are pixel indices (the centre of the first pixel is 0). `from_coco` and
`to_coco` convert.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dipr.core.errors import DiprError
from dipr.core.keypoints import COCO_KEYPOINTS

PERSON_CATEGORY = 1
# COCO continuous coordinates − pixel index coordinates.
COCO_OFFSET = 0.5
# The development set: $DIPR_DEV_DATA, else shared/data/coco_dev beside the checkout (it is
# never copied into the repository).
DEV_DATA_VARIABLE = "DIPR_DEV_DATA"
_CHECKOUT = Path(__file__).resolve().parents[1]


class DatasetError(DiprError):
    """The annotations or images cannot be used; the message says why."""


@dataclass(frozen=True)
class LabelledPerson:
    """One annotated person: annotation id, image, box and keypoints (COCO coordinates)."""

    annotation_id: int
    image_id: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2, COCO coordinates
    keypoints: np.ndarray  # [17, 3] (x, y, v), v = 0 when not labelled
    area: float

    @property
    def labelled(self) -> np.ndarray:
        return self.keypoints[:, 2] > 0


@dataclass(frozen=True)
class KeypointSet:
    coco: dict[str, Any]  # the annotation file as loaded (pycocotools reads it)
    persons: tuple[LabelledPerson, ...]
    image_paths: dict[int, Path]

    def image_path(self, person: LabelledPerson) -> Path:
        return self.image_paths[person.image_id]


def dev_data() -> Path:
    """Where the development set is (it may not exist)."""
    configured = os.environ.get(DEV_DATA_VARIABLE)
    if configured:
        return Path(configured)
    return _CHECKOUT.parent / "shared" / "data" / "coco_dev"


def from_coco(points: np.ndarray) -> np.ndarray:
    return points - COCO_OFFSET


def to_coco(points: np.ndarray) -> np.ndarray:
    return points + COCO_OFFSET


def load_keypoint_set(annotations: Path, images: Path) -> KeypointSet:
    """The persons of a COCO-format keypoint file whose images are in `images`."""
    if not annotations.is_file():
        raise DatasetError(f"annotations file not found: {annotations}")
    try:
        coco: dict[str, Any] = json.loads(annotations.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"annotations file {annotations} is not JSON: {error}") from error
    persons = sorted(
        (person for a in coco.get("annotations", []) if (person := _person(a)) is not None),
        key=lambda p: (p.image_id, p.annotation_id),
    )
    if not persons:
        raise DatasetError(f"no person annotations with 17 keypoints in {annotations}")
    paths = {int(i["id"]): images / i["file_name"] for i in coco.get("images", [])}
    missing = sorted(
        {
            str(paths.get(p.image_id, p.image_id))
            for p in persons
            if p.image_id not in paths or not paths[p.image_id].is_file()
        }
    )
    if missing:
        raise DatasetError(f"missing image(s): {', '.join(missing[:5])}")
    return KeypointSet(coco=coco, persons=tuple(persons), image_paths=paths)


def _person(annotation: dict[str, Any]) -> LabelledPerson | None:
    """The annotation as a person, or None when it is not one to use."""
    if annotation.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY or annotation.get(
        "iscrowd", 0
    ):
        return None
    keypoints = np.asarray(annotation.get("keypoints", []), dtype=np.float64)
    if keypoints.size != 3 * len(COCO_KEYPOINTS):
        return None
    keypoints = keypoints.reshape(-1, 3)
    x, y, w, h = (float(v) for v in annotation.get("bbox", (0, 0, 0, 0)))
    if not (keypoints[:, 2] > 0).any() or w < 1 or h < 1:
        return None
    return LabelledPerson(
        annotation_id=int(annotation["id"]),
        image_id=int(annotation["image_id"]),
        box=(x, y, x + w, y + h),
        keypoints=keypoints,
        area=float(annotation.get("area", w * h)),
    )
