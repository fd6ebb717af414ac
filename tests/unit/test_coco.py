"""The one COCO-format loader of evaluation and training: which annotations are persons, their
order, coordinates, and clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from dipr.core.coco import DatasetError, from_coco, load_keypoint_set, to_coco


def keypoints(labelled: int = 17) -> list[float]:
    values = []
    for k in range(17):
        values += [10.0 + k, 20.0 + k, 2.0 if k < labelled else 0.0]
    return values


def annotation(id_: int, image_id: int, **changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "id": id_,
        "image_id": image_id,
        "category_id": 1,
        "iscrowd": 0,
        "bbox": [5.0, 6.0, 50.0, 80.0],
        "area": 3000.0,
        "keypoints": keypoints(),
        "num_keypoints": 17,
    }
    entry.update(changes)
    return entry


def write_set(folder: Path, annotations: list[dict[str, object]], images: int = 2) -> Path:
    for i in range(1, images + 1):
        (folder / f"{i}.jpg").write_bytes(b"not read by the loader")
    path = folder / "set.json"
    listed = [{"id": i, "file_name": f"{i}.jpg"} for i in range(1, images + 1)]
    path.write_text(json.dumps({"images": listed, "annotations": annotations}))
    return path


def test_persons_are_sorted_by_image_then_annotation_and_filtered(tmp_path):
    path = write_set(
        tmp_path,
        [
            annotation(9, 2),
            annotation(3, 1),
            annotation(1, 2),
            annotation(4, 1, iscrowd=1),
            annotation(5, 1, category_id=2),
            annotation(6, 1, keypoints=keypoints(labelled=0)),
            annotation(7, 1, keypoints=keypoints()[:30]),  # not 17 keypoints
            annotation(8, 1, bbox=[0, 0, 0.5, 10]),  # under a pixel wide
            annotation(10, 1, keypoints=keypoints(labelled=1), num_keypoints=0),
        ],
    )
    dataset = load_keypoint_set(path, tmp_path)
    order = [(p.image_id, p.annotation_id) for p in dataset.persons]
    assert order == [(1, 3), (1, 10), (2, 1), (2, 9)]
    person = dataset.persons[0]
    assert person.box == (5.0, 6.0, 55.0, 86.0)  # x, y, w, h → x1, y1, x2, y2
    assert person.keypoints.shape == (17, 3) and person.labelled.all()
    assert person.area == 3000.0
    assert dataset.persons[1].labelled.sum() == 1  # counted from v, not from num_keypoints
    assert dataset.image_path(person) == tmp_path / "1.jpg"


def test_coco_coordinates_are_pixel_indices_plus_a_half():
    points = np.array([[0.5, 0.5], [10.0, 3.25]])
    np.testing.assert_array_equal(from_coco(points), [[0.0, 0.0], [9.5, 2.75]])
    np.testing.assert_array_equal(to_coco(from_coco(points)), points)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda folder: folder / "absent.json", "annotations file not found"),
        (lambda folder: write_text(folder / "a.json", "{not json"), "is not JSON"),
        (lambda folder: write_set(folder, [annotation(1, 1, iscrowd=1)]), "no person annotations"),
        (lambda folder: write_set(folder, [annotation(1, 3)]), "missing image"),
    ],
)
def test_unusable_sets_are_clear_errors(tmp_path, setup, message):
    with pytest.raises(DatasetError, match=message):
        load_keypoint_set(setup(tmp_path), tmp_path)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
