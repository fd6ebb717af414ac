"""The ONNX contract between `dipr export` and everything that runs its models.

Input `image`: uint8 [N, H, W, 3] RGB. Outputs, float32: `keypoints` [N, K, 2] (x, y) in input
pixel index coordinates (pixel centres at integers), debiased as `debias`/`debias_mode` say,
`scores` [N, K] in [0, 1], `keypoints_raw` [N, K, 2] uncorrected soft-argmax in input pixels;
optionally `keypoints_official`, the network's own published decode, for evaluation (MoveNet has
one, SimpleBaseline has none).
Metadata (ONNX metadata_props, all strings; JSON where structured) describes the rest. The keys in
METADATA_KEYS are always present; those in OPTIONAL_METADATA_KEYS are written by every current
export but absent from models exported before they existed, so readers must not require them.

`describe` is the one reader and checker of the contract: the service, `dipr eval` and the
benchmarks all learn what a model is from it.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dipr.core.errors import ModelError

INPUT = "image"
KEYPOINTS = "keypoints"
SCORES = "scores"
KEYPOINTS_RAW = "keypoints_raw"
KEYPOINTS_OFFICIAL = "keypoints_official"
REQUIRED_OUTPUTS = (KEYPOINTS, SCORES, KEYPOINTS_RAW)

# metadata_props keys
NAME = "name"
VERSION = "version"
INPUT_SIZE = "input_size"  # JSON [width, height]
KEYPOINT_NAMES = "keypoint_names"  # JSON list of K names
SKELETON = "skeleton"  # JSON list of [i, j] 0-based limb pairs
BETA = "beta"
REGION = "region"  # "global" | "window" | "person"
WINDOW = "window"  # side of the k×k window, "" for the whole map
DEBIAS = "debias"  # "true" | "false": whether `keypoints` carries a correction (any mode)
SCORE_MEANING = "score_meaning"
SOURCE_WEIGHTS = "source_weights"
SOURCE_SHA256 = "source_weights_sha256"
PRECISION = "precision"  # "fp32" | "fp16" | "int8" (backbone; the head is always fp32)
# Which correction `keypoints` carries: "paper" (Gu et al.'s closed form, β in C, |Ω| cells),
# "mmpose" (MMPose's IntegralRegressionHead debias=True: C without β, |Ω| = 1; nearly a no-op)
# or "none" (then `keypoints` equals `keypoints_raw` and DEBIAS is "false").
DEBIAS_MODE = "debias_mode"
# How heatmap index j became an input pixel: "dipr" ((j + 0.5)·stride − 0.5, cell centres; MoveNet
# and `dipr train` networks) or "mmpose" (j·stride − 0.5; networks trained with MMPose).
COORDINATES = "coordinates"
# The head the network was trained with ("paper", "mmpose", "none"), "" when unknown: compare
# with DEBIAS_MODE to see whether a model is served as it was trained.
TRAINED_DEBIAS = "trained_debias"
# "true" when every crop also runs mirrored and the head reads the average of both maps.
FLIP_TEST = "flip_test"
# int8 models: how many network inputs calibrated them, and the SHA-256 of those inputs' pixels.
CALIBRATION_INPUTS = "calibration_inputs"
CALIBRATION_SHA256 = "calibration_sha256"
# int8 models: "fp32 → int8" mean OKS on the set that gated the export, and that set's name.
ACCURACY_GATE = "accuracy_gate"
METADATA_KEYS = (
    NAME,
    VERSION,
    INPUT_SIZE,
    KEYPOINT_NAMES,
    SKELETON,
    BETA,
    REGION,
    WINDOW,
    DEBIAS,
    SCORE_MEANING,
    SOURCE_WEIGHTS,
    SOURCE_SHA256,
    PRECISION,
)
OPTIONAL_METADATA_KEYS = (DEBIAS_MODE, COORDINATES, TRAINED_DEBIAS, FLIP_TEST)


@dataclass(frozen=True)
class ModelInfo:
    """What a model following the contract is, read from its inputs, outputs and metadata."""

    name: str
    version: str
    input_size: tuple[int, int]  # (width, height)
    keypoint_names: tuple[str, ...]
    skeleton: tuple[tuple[int, int], ...]
    debias: bool
    beta: str
    region: str
    window: str  # "" for the whole map
    outputs: tuple[str, ...]  # every output, in the model's order
    metadata: dict[str, str]

    @property
    def description(self) -> str:
        """One line for tables: name, β, region, and the precision and flip test where they are not
        the plain fp32 run."""
        window = f" k={self.window}" if self.window else ""
        precision = self.metadata.get(PRECISION, "fp32")
        options = "".join(
            [f" {precision}" if precision != "fp32" else "", " flip" if self.flip_test else ""]
        )
        return f"{self.name} β={self.beta} {self.region}{window}{options}"

    @property
    def flip_test(self) -> bool:
        return self.metadata.get(FLIP_TEST) == "true"


class _Tensor(Protocol):
    name: str
    type: str


class _Metadata(Protocol):
    custom_metadata_map: dict[str, str]


class Session(Protocol):
    """What `describe` reads of an onnxruntime.InferenceSession."""

    def get_inputs(self) -> Sequence[_Tensor]: ...

    def get_outputs(self) -> Sequence[_Tensor]: ...

    def get_modelmeta(self) -> _Metadata: ...


def check_signature(session: Session, required: Sequence[str], what: str) -> tuple[str, ...]:
    """Every output's name, once the input is the one uint8 `image` that every dipr model takes
    and the `required` outputs are there; ModelError naming what is not."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != INPUT or inputs[0].type != "tensor(uint8)":
        found = ", ".join(f"{i.name} ({i.type})" for i in inputs)
        raise ModelError(f"{what} must take one uint8 input named {INPUT!r}, not {found}")
    outputs = tuple(o.name for o in session.get_outputs())
    missing = [name for name in required if name not in outputs]
    if missing:
        raise ModelError(f"{what} lacks the output(s) {', '.join(missing)}")
    return outputs


def describe(session: Session) -> ModelInfo:
    """The model's ModelInfo; ModelError naming what breaks the contract."""
    outputs = check_signature(session, REQUIRED_OUTPUTS, "the model")
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    try:
        width, height = (int(v) for v in json.loads(metadata[INPUT_SIZE]))
        names = tuple(str(n) for n in json.loads(metadata[KEYPOINT_NAMES]))
        skeleton = tuple((int(a), int(b)) for a, b in json.loads(metadata[SKELETON]))
        return ModelInfo(
            name=metadata[NAME],
            version=metadata[VERSION],
            input_size=(width, height),
            keypoint_names=names,
            skeleton=skeleton,
            debias=metadata[DEBIAS] == "true",
            # Descriptive only (the service does not need them): "?" where a model lacks them.
            beta=metadata.get(BETA, "?"),
            region=metadata.get(REGION, "?"),
            window=metadata.get(WINDOW, ""),
            outputs=outputs,
            metadata=metadata,
        )
    except (KeyError, ValueError, TypeError) as error:
        raise ModelError(
            f"the model's metadata does not follow the dipr contract: {error!r}"
        ) from error
