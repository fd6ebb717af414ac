"""Person detection around a detector model: the picture letterboxed into its input, and its
candidates back in image pixels, thresholded, as person boxes for the pose model.

The letterbox is the whole picture as one crop (`core.crops`, padding 1: scaled to fit, centred,
zero outside), so a detection comes back through the same inverse affine as a keypoint does.
The service and `dipr eval --detector` both use this module, so they detect alike.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dipr.core import detector_contract
from dipr.core.crops import Box, Crop
from dipr.core.images import DecodedImage
from dipr.core.prepare import CroppedImage, crop_boxes

# Which box a detected person is cropped by: the detector's box head, or the extent of its own
# keypoints (those scored at least KEYPOINT_EXTENT_SCORE; the box head where too few are).
BoxSource = Literal["box", "keypoints"]
BOX_SOURCES: tuple[BoxSource, ...] = ("box", "keypoints")
KEYPOINT_EXTENT_SCORE = 0.2
KEYPOINT_EXTENT_MIN = 3
# The box score from which a candidate is a person, unless told otherwise (chosen on the dev set:
# README, "Person detection").
DEFAULT_MIN_PERSON_SCORE = 0.1


@dataclass(frozen=True)
class DetectedPerson:
    """One candidate above the threshold, in image pixels."""

    box: Box  # x1, y1, x2, y2, pixel edges: what the pose model is cropped by
    score: float  # the detector's box score
    keypoints: np.ndarray  # [K, 2] (x, y) the detector's own keypoints, pixel indices
    keypoint_scores: np.ndarray  # [K]


def letterbox(image: DecodedImage, input_size: tuple[int, int]) -> CroppedImage:
    """The whole picture as the detector's input (one crop, padding 1, centred)."""
    return crop_boxes(image, None, input_size)


def detect(
    image: DecodedImage,
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    input_size: tuple[int, int],
    min_score: float,
    box_source: BoxSource = "box",
) -> list[DetectedPerson]:
    """One picture through a detector called directly (`run`: batch in, outputs out), as
    `dipr eval` and the benchmark do; the service batches `letterbox` and `persons_in` itself."""
    boxed = letterbox(image, input_size)
    outputs = run(boxed.inputs)
    return persons_in(
        {name: values[0] for name, values in outputs.items()},
        boxed.crops[0],
        (image.width, image.height),
        min_score,
        box_source,
    )


def box_to_image(crop: Crop, box: np.ndarray) -> Box:
    """[x1, y1, x2, y2] in input edge coordinates → image edge coordinates. The affine maps pixel
    indices, whose centres are half a pixel from the edges on both sides."""
    corners = crop.to_image(np.asarray(box, np.float64).reshape(2, 2) - 0.5) + 0.5
    (x1, y1), (x2, y2) = corners
    return (float(x1), float(y1), float(x2), float(y2))


def persons_in(
    outputs: dict[str, np.ndarray],
    crop: Crop,
    image_size: tuple[int, int],
    min_score: float,
    box_source: BoxSource = "box",
) -> list[DetectedPerson]:
    """The candidates of one picture (outputs without the batch axis) scoring at least
    `min_score`, best first, mapped back through the letterbox `crop` and clipped to the
    `image_size` = (width, height) picture; a box less than a pixel wide or high is dropped."""
    scores = outputs[detector_contract.BOX_SCORES]
    order = np.argsort(-scores, kind="stable")
    persons = []
    for row in order:
        score = float(scores[row])
        if not score >= min_score:  # NaN too
            continue
        keypoints = crop.to_image(outputs[detector_contract.KEYPOINTS][row].astype(np.float64))
        keypoint_scores = outputs[detector_contract.KEYPOINT_SCORES][row]
        box = box_to_image(crop, outputs[detector_contract.BOXES][row])
        if box_source == "keypoints":
            box = keypoint_extent(keypoints, keypoint_scores) or box
        box = clip_box(box, image_size)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            continue  # in the letterbox's padding, or too small to crop
        persons.append(DetectedPerson(box, score, keypoints, keypoint_scores))
    return persons


def keypoint_extent(keypoints: np.ndarray, scores: np.ndarray) -> Box | None:
    """The box through the outermost keypoints scored at least KEYPOINT_EXTENT_SCORE (edges half
    a pixel outside their centres); None with fewer than KEYPOINT_EXTENT_MIN of them."""
    confident = keypoints[scores >= KEYPOINT_EXTENT_SCORE]
    if len(confident) < KEYPOINT_EXTENT_MIN:
        return None
    (x1, y1), (x2, y2) = confident.min(axis=0) - 0.5, confident.max(axis=0) + 0.5
    return (float(x1), float(y1), float(x2), float(y2))


def clip_box(box: Box, image_size: tuple[int, int]) -> Box:
    width, height = image_size
    x1, y1, x2, y2 = box
    return (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )


def boxes_of(persons: Sequence[DetectedPerson]) -> list[Box]:
    return [person.box for person in persons]
