"""`dipr eval --detector`: accuracy without ground-truth boxes, the way the service runs.

Every image of the set goes through the detector (the whole picture letterboxed, `dipr.core.
detection`, its candidates above the threshold kept) and its persons are compared with the
labelled ones in three ways, side by side:

- (i) `detector`: the detector's own keypoints;
- (ii) `detected boxes → pose`: the pose model on the detector's boxes — what the service serves;
- (iii) `ground-truth boxes → pose`: the pose model on the labelled boxes, the ceiling.

Measures per way: COCO keypoint AP / AP50 / AP75 (pycocotools, every returned person a detection
scored by its person score: the detector's box score for (i) and (ii), the mean keypoint score for
(iii)), and, for each labelled person with at least MIN_OKS_KEYPOINTS keypoints, the best OKS among
the persons returned for its image: their mean, and the share of them at OKS ≥ 0.5 (recall).
Images are prepared with the service's own code (`dipr.core.prepare`), so a figure here is what
the service returns.
"""

import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dipr.core import detector_contract, pose_contract
from dipr.core.coco import KeypointSet, LabelledPerson, to_coco
from dipr.core.crops import PADDING, Box
from dipr.core.detection import BoxSource, boxes_of, detect
from dipr.core.detector_contract import DetectorInfo
from dipr.core.errors import DiprError
from dipr.core.images import DecodedImage, read_header
from dipr.core.pose_contract import ModelInfo
from dipr.core.prepare import crop_boxes, decode_for_boxes, refine_for_boxes
from dipr.evaluation.coco_eval import (
    MIN_OKS_KEYPOINTS,
    EvaluationError,
    coco_keypoint_ap,
    oks,
    open_model,
    result_entry,
)

DETECTOR = "detector"
DETECTED_BOXES = "detected boxes → pose"
GROUND_TRUTH_BOXES = "ground-truth boxes → pose"
WAYS = (DETECTOR, DETECTED_BOXES, GROUND_TRUTH_BOXES)
MATCHED = 0.5  # the OKS from which a labelled person counts as found
MAX_PIXELS = 1 << 40  # the set's own files: any size


@dataclass(frozen=True)
class ReturnedPerson:
    keypoints: np.ndarray  # [K, 2] COCO coordinates
    score: float  # the person score AP ranks by


@dataclass(frozen=True)
class DetectionAccuracy:
    way: str
    ap: float
    ap50: float
    ap75: float
    matched_oks: float  # mean over labelled persons of the best OKS among those returned
    recall: float  # share of labelled persons with a returned one at OKS ≥ MATCHED
    labelled: int  # labelled persons counted (≥ MIN_OKS_KEYPOINTS keypoints)
    returned: int  # persons returned in all


def evaluate_detection(
    dataset: KeypointSet,
    detector_path: Path,
    pose_path: Path,
    min_score: float,
    box_source: BoxSource = "box",
    padding: float = PADDING,
    verbose: bool = False,
) -> list[DetectionAccuracy]:
    """One row per way, (i) to (iii)."""
    detector, detector_info = open_model(detector_path, detector_contract.describe, "detector")
    pose, pose_info = open_model(pose_path)
    returned: dict[str, dict[int, list[ReturnedPerson]]] = {way: {} for way in WAYS}
    labelled = _labelled_by_image(dataset)
    for image_id, path in sorted(dataset.image_paths.items()):
        if not path.is_file():
            continue  # an image the set lists but nobody is labelled in, and that is not here
        for way, persons in _returned(
            path,
            labelled.get(image_id, []),
            (detector, detector_info),
            (pose, pose_info),
            min_score,
            box_source,
            padding,
        ).items():
            returned[way][image_id] = persons
    return [_accuracy(way, dataset, labelled, returned[way], verbose) for way in WAYS]


def _labelled_by_image(dataset: KeypointSet) -> dict[int, list[LabelledPerson]]:
    groups = itertools.groupby(dataset.persons, key=lambda p: p.image_id)
    return {image_id: list(group) for image_id, group in groups}


def _returned(
    path: Path,
    labelled: Sequence[LabelledPerson],
    detector: tuple[ort.InferenceSession, DetectorInfo],
    pose: tuple[ort.InferenceSession, ModelInfo],
    min_score: float,
    box_source: BoxSource,
    padding: float,
) -> dict[str, list[ReturnedPerson]]:
    """The persons each way returns for one image, prepared as the service prepares it."""
    detector_session, detector_info = detector
    pose_session, pose_info = pose
    data = path.read_bytes()
    try:
        header = read_header(data, None, MAX_PIXELS)
        decoded = decode_for_boxes(data, header, None, pose_info.input_size, padding=padding)
        found = detect(
            decoded,
            lambda inputs: _run(detector_session, detector_contract.OUTPUTS, inputs),
            detector_info.input_size,
            min_score,
            box_source,
        )
        detected_boxes = boxes_of(found)
        refined = refine_for_boxes(
            data, header, decoded, detected_boxes, pose_info.input_size, padding=padding
        )
        ground_truth = decode_for_boxes(
            data, header, [p.box for p in labelled] or None, pose_info.input_size, padding=padding
        )
    except DiprError as error:
        raise EvaluationError(f"{path}: {error.message}") from error
    scores = [person.score for person in found]
    return {
        DETECTOR: [ReturnedPerson(to_coco(person.keypoints), person.score) for person in found],
        DETECTED_BOXES: _posed(pose_session, pose_info, refined, detected_boxes, padding, scores),
        GROUND_TRUTH_BOXES: _posed(
            pose_session, pose_info, ground_truth, [p.box for p in labelled], padding, None
        ),
    }


def _posed(
    session: ort.InferenceSession,
    model: ModelInfo,
    image: DecodedImage,
    boxes: Sequence[Box],
    padding: float,
    box_scores: Sequence[float] | None,
) -> list[ReturnedPerson]:
    """The pose model on `boxes` of the picture; scored by the box scores when given, else by the
    mean keypoint score."""
    if not boxes:
        return []
    cropped = crop_boxes(image, boxes, model.input_size, padding=padding)
    names = [pose_contract.KEYPOINTS, pose_contract.SCORES]
    outputs = _run(session, names, cropped.inputs)
    rows = zip(
        cropped.crops,
        outputs[pose_contract.KEYPOINTS],
        outputs[pose_contract.SCORES],
        strict=True,
    )
    return [
        ReturnedPerson(
            to_coco(crop.to_image(keypoints.astype(np.float64))),
            float(scores.mean()) if box_scores is None else box_scores[i],
        )
        for i, (crop, keypoints, scores) in enumerate(rows)
    ]


def _run(
    session: ort.InferenceSession, names: Sequence[str], inputs: np.ndarray
) -> dict[str, np.ndarray]:
    values = session.run(list(names), {pose_contract.INPUT: inputs})
    return dict(zip(names, values, strict=True))


def _accuracy(
    way: str,
    dataset: KeypointSet,
    labelled: dict[int, list[LabelledPerson]],
    returned: dict[int, list[ReturnedPerson]],
    verbose: bool,
) -> DetectionAccuracy:
    results = [
        result_entry(image_id, person.keypoints, person.score)
        for image_id, persons in returned.items()
        for person in persons
    ]
    ap, ap50, ap75 = coco_keypoint_ap(dataset.coco, results, verbose)
    best = [
        max(
            (oks(p.keypoints, person.keypoints, person.area) for p in returned.get(image_id, [])),
            default=0.0,
        )
        for image_id, persons in labelled.items()
        for person in persons
        if person.labelled.sum() >= MIN_OKS_KEYPOINTS
    ]
    return DetectionAccuracy(
        way=way,
        ap=ap,
        ap50=ap50,
        ap75=ap75,
        matched_oks=float(np.mean(best)) if best else float("nan"),
        recall=float(np.mean([value >= MATCHED for value in best])) if best else float("nan"),
        labelled=len(best),
        returned=sum(len(persons) for persons in returned.values()),
    )


COLUMNS = ("way", "AP", "AP50", "AP75", "matched OKS", "recall @ OKS 0.5", "persons returned")


def markdown_table(rows: Sequence[DetectionAccuracy]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|" + "|".join(["---:"] * (len(COLUMNS) - 1)) + "|",
    ]
    for r in rows:
        cells = [
            r.way,
            f"{r.ap:.3f}",
            f"{r.ap50:.3f}",
            f"{r.ap75:.3f}",
            f"{r.matched_oks:.3f}",
            f"{r.recall:.3f}",
            str(r.returned),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(rows: Sequence[DetectionAccuracy], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
