"""Export a deployable network to ONNX and prove it computes what PyTorch computes.

Pose models: `movenet-thunder`, `movenet-lightning` (the embedded weights, or a `dipr train`
fine-tuning checkpoint) and `simplebaseline-res{18,34,50,101,152}` (a `dipr train` checkpoint or
an MMPose checkpoint), as their records in `dipr.models.registry` say. Every one writes the
same contract (`dipr.core.pose_contract`).

Person detectors: `movenet-multipose` (its embedded weights or others in their layout), written to
the detector contract (`dipr.core.detector_contract`) by the detector counterparts below
(`build_detector_model`, `detector_parity`, `load_detector_parity_images`); `export_onnx` and
`check_parity` serve both.
"""

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

from dipr.core import detector_contract, pose_contract
from dipr.core.composites import side_by_side
from dipr.core.detection import letterbox
from dipr.core.images import DecodedImage
from dipr.core.keypoints import COCO_KEYPOINTS, COCO_SKELETON
from dipr.models.movenet.multipose import MultiPoseDetector
from dipr.models.movenet.pose import MoveNetPose
from dipr.models.regions import Region
from dipr.models.registry import (
    DEFAULT_WINDOW,
    Architecture,
    BuiltDetector,
    BuiltPose,
    DetectorArchitecture,
    DetectorExportRequest,
    ExportRequest,
    architecture,
    detector_architecture,
    movenet_variant,
)
from dipr.models.simplebaseline.pose import SimpleBaselinePose
from dipr.models.simplebaseline.variants import DebiasMode

OPSET = 18  # torch.logsumexp exported at opset 17 gave an invalid model
# Worst keypoint difference ORT vs PyTorch allowed, in input pixels.
TOLERANCE_FP32 = 0.01
TOLERANCE_FP16 = 0.5
# Worst score difference (keypoint and person scores, in [0, 1]) allowed for a detector.
SCORE_TOLERANCE_FP32 = 1e-4
SCORE_TOLERANCE_FP16 = 0.02
PoseModule = MoveNetPose | SimpleBaselinePose
DeployableModule = PoseModule | MultiPoseDetector  # what `export_onnx` writes


@dataclass(frozen=True)
class ExportOptions:
    variant: str = "thunder"  # MoveNet variant when `arch` is None
    beta: float | None = None  # None: the architecture's (MoveNet 5), or the trained one
    region: Region | None = None  # None: the architecture's default (MoveNet: person)
    window: int | None = None  # None: 7, where the region has a window
    weights: Path | None = None  # MoveNet safetensors (default: the committed ones)
    fp16: bool = False
    version: str = "1"
    arch: str | None = None  # "movenet-thunder", …, "simplebaseline-res50", …
    checkpoint: Path | None = None  # `dipr train` checkpoint, or an MMPose .pth (SimpleBaseline)
    input_size: tuple[int, int] | None = None  # (width, height), SimpleBaseline only
    debias: DebiasMode | None = None  # None: "paper"
    mmpose_config: str | None = None  # preset name or MMPose config file
    flip_test: bool = False  # each crop also runs mirrored, the maps averaged before the head

    @property
    def architecture(self) -> Architecture:
        """Its pose model's registry record; ValueError for a detector or an unknown name."""
        return architecture(self.arch) if self.arch else movenet_variant(self.variant)


def export_request(options: ExportOptions) -> ExportRequest:
    """What to ask the architecture's builder for, its defaults filled in; ValueError for options
    that do not apply to it."""
    arch = options.architecture
    arch.check_options(
        region=options.region,
        window=options.window,
        input_size=options.input_size,
        debias=options.debias,
        weights=options.weights,
        checkpoint=options.checkpoint,
        mmpose_config=options.mmpose_config,
    )
    source = options.checkpoint or options.weights or arch.weights
    if source is None:
        mmpose = " or an MMPose .pth" if arch.takes_mmpose_config else ""
        raise ValueError(
            f"{arch.name} has no embedded weights: pass --checkpoint (a `dipr train` "
            f"checkpoint{mmpose})"
        )
    region = options.region or arch.default_region
    window = None
    if region != "global":
        window = DEFAULT_WINDOW if options.window is None else options.window
    return ExportRequest(
        source=source,
        beta=options.beta,
        region=region,
        window=window,
        input_size=options.input_size,
        debias=options.debias or arch.debias_modes[0],
        mmpose_config=options.mmpose_config,
        fp16=options.fp16,
        flip_test=options.flip_test,
    )


def build_pose_model(options: ExportOptions) -> tuple[PoseModule, dict[str, str]]:
    """The deployable network and the metadata that describes it; ValueError for options that do
    not apply to its architecture."""
    arch = options.architecture
    request = export_request(options)
    built = arch.build_for_export(request)
    return built.pose, _metadata(arch, options, request, built)


def _metadata(
    arch: Architecture, options: ExportOptions, request: ExportRequest, built: BuiltPose
) -> dict[str, str]:
    return {
        pose_contract.NAME: arch.name,
        pose_contract.VERSION: options.version,
        pose_contract.INPUT_SIZE: json.dumps(list(built.input_size)),
        pose_contract.KEYPOINT_NAMES: json.dumps(list(COCO_KEYPOINTS)),
        pose_contract.SKELETON: json.dumps([list(limb) for limb in COCO_SKELETON]),
        pose_contract.PRECISION: "fp16" if request.fp16 else "fp32",
        pose_contract.BETA: repr(float(built.beta)),
        pose_contract.REGION: request.region,
        pose_contract.WINDOW: "" if request.window is None else str(request.window),
        pose_contract.DEBIAS: "false" if request.debias == "none" else "true",
        pose_contract.DEBIAS_MODE: request.debias,
        pose_contract.COORDINATES: built.coordinates,
        pose_contract.TRAINED_DEBIAS: built.trained_debias,
        pose_contract.SCORE_MEANING: built.score_meaning,
        pose_contract.SOURCE_WEIGHTS: request.source.name,
        pose_contract.SOURCE_SHA256: hashlib.sha256(request.source.read_bytes()).hexdigest(),
        pose_contract.FLIP_TEST: "true" if request.flip_test else "false",
    }


def pose_input_size(pose: DeployableModule) -> tuple[int, int]:
    """(width, height) of a deployable model's input (a pose model's or a detector's)."""
    width, height = pose.input_size
    return int(width), int(height)


def output_names(pose: DeployableModule) -> tuple[str, ...]:
    return pose.output_names


def export_onnx(pose: DeployableModule, metadata: dict[str, str], path: Path) -> onnx.ModelProto:
    """Write the model with a dynamic batch axis and its metadata; check it with onnx.checker.
    Both contracts name their uint8 NHWC input `image`."""
    width, height = pose_input_size(pose)
    # Traced at batch 2 so that nothing specialises on a batch of 1.
    example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        pose,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[pose_contract.INPUT],
        output_names=list(output_names(pose)),
        dynamic_shapes={"image": {0: batch}},
        verbose=False,
        optimize=True,
    )
    model = program.model_proto
    model.producer_name = "dipr"
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return model


def read_photos(folder: Path) -> list[np.ndarray]:
    """The RGB photos (*.jpg, *.png) of a folder, in name order."""
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise FileNotFoundError(f"no parity photos (*.jpg, *.png) in {folder}")
    frames = []
    for photo in photos:
        bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode {photo}")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def load_parity_images(folder: Path, size: int | tuple[int, int], count: int) -> np.ndarray:
    """`count` distinct uint8 RGB inputs from the photos in `folder`: whole frames, mirrored
    frames and centre crops, resized to the network input (a side, or (width, height))."""
    width, height = (size, size) if isinstance(size, int) else size
    frames = []
    for rgb in read_photos(folder):
        h, w = rgb.shape[:2]
        frames += [rgb, rgb[:, ::-1], rgb[h // 8 : h - h // 8, w // 8 : w - w // 8]]
    inputs = [
        cv2.resize(np.ascontiguousarray(f), (width, height), interpolation=cv2.INTER_AREA)
        for f in frames
    ]
    return np.stack([inputs[i % len(inputs)] for i in range(count)])


def parity(
    pose: PoseModule, onnx_path: Path, images: np.ndarray, batches: tuple[int, ...] = (1, 3, 8)
) -> dict[int, float]:
    """Max |ORT − PyTorch| over all keypoint outputs (input pixels) at each batch size."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = output_names(pose)
    keypoint_outputs = [n for n in names if n != pose_contract.SCORES]
    worst: dict[int, float] = {}
    for batch in batches:
        chunk = images[:batch]
        with torch.no_grad():
            expected = pose(torch.from_numpy(chunk))
        got = dict(zip(names, session.run(list(names), {pose_contract.INPUT: chunk}), strict=True))
        differences = [
            np.abs(got[name] - getattr(expected, name).numpy()).max() for name in keypoint_outputs
        ]
        worst[batch] = float(np.max(differences))  # np.max keeps a NaN, which max() can drop
    return worst


class ParityError(Exception):
    """The exported model does not compute what the PyTorch network computes."""


def check_parity(worst: dict[int, float], tolerance: float, unit: str = "px") -> None:
    """Refuse an export whose worst difference at any batch size (`parity`'s result, in input
    pixels; or another `unit`, "" for a plain number such as a score) exceeds `tolerance`."""
    # A NaN (a broken graph) ranks worst and fails: `nan > tolerance` alone would let it pass.
    largest = max(worst.values(), key=lambda d: math.inf if math.isnan(d) else d)
    if not largest <= tolerance:
        suffix = f" {unit}" if unit else ""
        raise ParityError(f"parity failed: {largest:.3g}{suffix} > {tolerance}{suffix}")


# Person detectors.


def detector_request(options: ExportOptions) -> DetectorExportRequest:
    """What to ask the detector's builder for; ValueError naming the pose-only options given."""
    arch = detector_architecture(options.arch or "")
    arch.check_options(
        beta=options.beta,
        region=options.region,
        window=options.window,
        input_size=options.input_size,
        debias=options.debias,
        mmpose_config=options.mmpose_config,
        checkpoint=options.checkpoint,
    )
    return DetectorExportRequest(source=options.weights or arch.weights, fp16=options.fp16)


def build_detector_model(options: ExportOptions) -> tuple[MultiPoseDetector, dict[str, str]]:
    """The deployable detector and the metadata that describes it (`detector_contract`)."""
    arch = detector_architecture(options.arch or "")
    request = detector_request(options)
    built = arch.build_for_export(request)
    return built.detector, _detector_metadata(arch, options, request, built)


def _detector_metadata(
    arch: DetectorArchitecture,
    options: ExportOptions,
    request: DetectorExportRequest,
    built: BuiltDetector,
) -> dict[str, str]:
    return {
        detector_contract.ROLE: detector_contract.ROLE_PERSON_DETECTOR,
        detector_contract.NAME: arch.name,
        detector_contract.VERSION: options.version,
        detector_contract.INPUT_SIZE: json.dumps(list(built.input_size)),
        detector_contract.MAX_PERSONS: str(built.max_persons),
        detector_contract.KEYPOINT_NAMES: json.dumps(list(COCO_KEYPOINTS)),
        detector_contract.LETTERBOX: detector_contract.LETTERBOX_CENTRED,
        detector_contract.SOURCE_WEIGHTS: request.source.name,
        detector_contract.SOURCE_SHA256: hashlib.sha256(request.source.read_bytes()).hexdigest(),
        detector_contract.PRECISION: "fp16" if request.fp16 else "fp32",
    }


def load_detector_parity_images(
    folder: Path, input_size: tuple[int, int], count: int
) -> np.ndarray:
    """`count` distinct uint8 RGB detector inputs from the photos in `folder`, letterboxed as the
    service does: pictures of several people first (consecutive photos side by side, then all of
    them in a row), then each photo, then each mirrored."""
    frames = read_photos(folder)
    height = min(frame.shape[0] for frame in frames)
    pictures = [side_by_side([a, b], height) for a, b in itertools.pairwise(frames)]
    pictures.append(side_by_side(frames, height))
    pictures += [*frames, *(np.ascontiguousarray(f[:, ::-1]) for f in frames)]
    inputs = [letterbox(DecodedImage(picture, 1), input_size).inputs[0] for picture in pictures]
    return np.stack([inputs[i % len(inputs)] for i in range(count)])


@dataclass(frozen=True)
class DetectorParity:
    """Worst |ORT − PyTorch| at each batch size: boxes and keypoints in input pixels, and the box
    and keypoint scores."""

    coordinates: dict[int, float]
    scores: dict[int, float]


def detector_parity(
    detector: MultiPoseDetector,
    onnx_path: Path,
    images: np.ndarray,
    batches: tuple[int, ...] = (1, 3, 8),
) -> DetectorParity:
    """Max |ORT − PyTorch| over the detector's outputs at each batch size, every row compared
    with the same row (so a different order of candidates counts as a difference)."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = output_names(detector)
    pixels = (detector_contract.BOXES, detector_contract.KEYPOINTS)
    coordinates: dict[int, float] = {}
    scores: dict[int, float] = {}
    for batch in batches:
        chunk = images[:batch]
        with torch.no_grad():
            expected = detector(torch.from_numpy(chunk))
        got = session.run(list(names), {detector_contract.INPUT: chunk})
        worst = {
            name: float(np.max(np.abs(value - getattr(expected, name).numpy())))
            for name, value in zip(names, got, strict=True)
        }
        # np.max keeps a NaN, which max() can drop.
        coordinates[batch] = float(np.max([worst[name] for name in pixels]))
        scores[batch] = float(np.max([d for name, d in worst.items() if name not in pixels]))
    return DetectorParity(coordinates=coordinates, scores=scores)
