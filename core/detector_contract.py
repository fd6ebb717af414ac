"""The ONNX contract of a person detector: what `dipr export --arch movenet-multipose` writes and
what the service's detection stage runs.

Input `image`: uint8 [N, H, W, 3] RGB, the whole picture letterboxed into the detector's input:
scaled by min(W / width, H / height) with its aspect kept, centred, the rest zero (exactly
`dipr.core.crops.crop_for_box` of the whole picture with padding 1: a crop like any other, mapped
back through the same inverse affine). Outputs, float32, one row per candidate, best first:

- `boxes` [N, P, 4]: x1, y1, x2, y2 of each person in input coordinates (pixel edges: the first
  pixel spans 0..1, like the boxes a client sends);
- `box_scores` [N, P]: the detector's confidence that the candidate is a person, in [0, 1];
- `keypoints` [N, P, K, 2]: the detector's own keypoints (x, y), input pixel indices (centre of
  the first pixel is 0), as in the pose contract;
- `keypoint_scores` [N, P, K] in [0, 1].

P is fixed (`max_persons`): a picture with fewer people has low-scoring candidates, and one with
more loses the lowest-scoring ones. Metadata (strings; JSON where structured) in DETECTOR_KEYS.
`describe` is the one reader and checker.
"""

import json
from dataclasses import dataclass

from dipr.core import pose_contract
from dipr.core.errors import ModelError
from dipr.core.pose_contract import Session, check_signature

INPUT = pose_contract.INPUT  # the one input of every dipr model

BOXES = "boxes"
BOX_SCORES = "box_scores"
KEYPOINTS = "keypoints"
KEYPOINT_SCORES = "keypoint_scores"
OUTPUTS = (BOXES, BOX_SCORES, KEYPOINTS, KEYPOINT_SCORES)

# metadata_props keys
ROLE = "role"  # always ROLE_PERSON_DETECTOR: a pose model has no role key
ROLE_PERSON_DETECTOR = "person_detector"
NAME = "name"
VERSION = "version"
INPUT_SIZE = "input_size"  # JSON [width, height]
MAX_PERSONS = "max_persons"  # P, as a decimal string
KEYPOINT_NAMES = "keypoint_names"  # JSON list of K names
LETTERBOX = "letterbox"  # how the picture fills the input: LETTERBOX_CENTRED
LETTERBOX_CENTRED = "centred"
SOURCE_WEIGHTS = "source_weights"
SOURCE_SHA256 = "source_weights_sha256"
PRECISION = "precision"  # "fp32" | "fp16"
DETECTOR_KEYS = (
    ROLE,
    NAME,
    VERSION,
    INPUT_SIZE,
    MAX_PERSONS,
    KEYPOINT_NAMES,
    LETTERBOX,
    SOURCE_WEIGHTS,
    SOURCE_SHA256,
    PRECISION,
)


@dataclass(frozen=True)
class DetectorInfo:
    """What a detector following the contract is."""

    name: str
    version: str
    input_size: tuple[int, int]  # (width, height)
    max_persons: int
    keypoint_names: tuple[str, ...]
    metadata: dict[str, str]


def describe(session: Session) -> DetectorInfo:
    """The detector's DetectorInfo; ModelError naming what breaks the contract."""
    check_signature(session, OUTPUTS, "the detector")
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    if metadata.get(ROLE) != ROLE_PERSON_DETECTOR:
        raise ModelError(
            f"not a person detector: its metadata {ROLE!r} is {metadata.get(ROLE)!r}, "
            f"not {ROLE_PERSON_DETECTOR!r}"
        )
    if metadata.get(LETTERBOX) != LETTERBOX_CENTRED:
        raise ModelError(f"the detector's letterbox is {metadata.get(LETTERBOX)!r}, not centred")
    try:
        width, height = (int(v) for v in json.loads(metadata[INPUT_SIZE]))
        max_persons = int(metadata[MAX_PERSONS])
        names = tuple(str(n) for n in json.loads(metadata[KEYPOINT_NAMES]))
        if max_persons < 1:
            raise ValueError(f"max_persons {max_persons} < 1")
        return DetectorInfo(
            name=metadata[NAME],
            version=metadata[VERSION],
            input_size=(width, height),
            max_persons=max_persons,
            keypoint_names=names,
            metadata=metadata,
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ModelError(
            f"the detector's metadata does not follow the dipr contract: {error!r}"
        ) from error
