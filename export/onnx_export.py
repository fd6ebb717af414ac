"""Export a deployable pose network to ONNX and prove it computes what PyTorch computes.

Architectures: `movenet-thunder`, `movenet-lightning` (the embedded weights, or a `dipr train`
fine-tuning checkpoint) and `simplebaseline-res{18,34,50,101,152}` (a `dipr train` checkpoint or
an MMPose checkpoint). Every one writes the same contract (`dipr.export.contract`).
"""

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dipr.export import contract
from dipr.models.checkpoints import is_train_checkpoint
from dipr.models.keypoints import COCO_KEYPOINTS, COCO_SKELETON
from dipr.models.movenet.pose import MoveNetPose
from dipr.models.movenet.variants import VARIANTS
from dipr.models.movenet.weights import default_weights, load_movenet
from dipr.models.regions import Region
from dipr.models.simplebaseline.heads import SCORE_WINDOW
from dipr.models.simplebaseline.pose import SimpleBaselinePose
from dipr.models.simplebaseline.variants import (
    ARCH_PREFIX,
    DebiasMode,
    arch_depth,
    check_input_size,
)
from dipr.models.simplebaseline.weights import load_simplebaseline, resolve_mmpose_config

OPSET = 18  # torch.logsumexp exported at opset 17 gave an invalid model
MOVENET_PREFIX = "movenet-"
MOVENET_ARCHS: tuple[str, ...] = tuple(f"{MOVENET_PREFIX}{v}" for v in sorted(VARIANTS))
DEFAULT_MOVENET_BETA = 5.0
SCORE_MEANING = (
    "MoveNet keypoint confidence: the sigmoid heatmap at the joint's decoded cell, "
    "the network's probability that the joint is visible there; 0 where the "
    "debiasing was ill-conditioned and the raw estimate was used"
)
SIMPLEBASELINE_SCORE_MEANING = (
    f"share of the softmax(beta*H) mass within the {SCORE_WINDOW}x{SCORE_WINDOW} heatmap cells "
    "around the map's arg-max: the probability the network's own distribution puts near its "
    "mode (high for one sharp peak, low for flat or multi-modal maps); 0 where the correction "
    "was ill-conditioned and the raw estimate was used"
)
PoseModule = MoveNetPose | SimpleBaselinePose


@dataclass(frozen=True)
class ExportOptions:
    variant: str = "thunder"  # MoveNet variant when `arch` is None
    beta: float | None = None  # None: MoveNet 5; SimpleBaseline: what it was trained with
    region: Region = "person"  # MoveNet only; SimpleBaseline debiases over the whole map
    window: int = 7
    weights: Path | None = None  # MoveNet safetensors (default: the committed ones)
    fp16: bool = False
    version: str = "1"
    arch: str | None = None  # "movenet-thunder", …, "simplebaseline-res50", …
    checkpoint: Path | None = None  # `dipr train` checkpoint, or an MMPose .pth (SimpleBaseline)
    input_size: tuple[int, int] | None = None  # (width, height), SimpleBaseline only
    debias: DebiasMode | None = None  # None: "paper"
    mmpose_config: str | None = None  # preset name or MMPose config file

    @property
    def resolved_arch(self) -> str:
        return self.arch or f"{MOVENET_PREFIX}{self.variant}"


def build_pose_model(options: ExportOptions) -> tuple[PoseModule, dict[str, str]]:
    """The deployable network and the metadata that describes it."""
    arch = options.resolved_arch
    if arch.startswith(ARCH_PREFIX):
        return _build_simplebaseline(options, arch)
    if arch not in MOVENET_ARCHS:
        raise ValueError(f"unknown architecture {arch!r}")
    return _build_movenet(replace(options, variant=arch[len(MOVENET_PREFIX) :]))


def _common_metadata(name: str, options: ExportOptions, size: tuple[int, int]) -> dict[str, str]:
    return {
        contract.NAME: name,
        contract.VERSION: options.version,
        contract.INPUT_SIZE: json.dumps(list(size)),
        contract.KEYPOINT_NAMES: json.dumps(list(COCO_KEYPOINTS)),
        contract.SKELETON: json.dumps([list(limb) for limb in COCO_SKELETON]),
        contract.PRECISION: "fp16" if options.fp16 else "fp32",
    }


def _source(path: Path) -> dict[str, str]:
    return {
        contract.SOURCE_WEIGHTS: path.name,
        contract.SOURCE_SHA256: hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def _build_movenet(options: ExportOptions) -> tuple[MoveNetPose, dict[str, str]]:
    if options.debias not in (None, "paper"):
        raise ValueError("MoveNet's head supports --debias paper only")
    if options.input_size is not None:
        raise ValueError("MoveNet's input size is fixed by its variant; drop --input-size")
    if options.mmpose_config is not None:
        raise ValueError("--mmpose-config applies to SimpleBaseline checkpoints only")
    if options.weights is not None and options.checkpoint is not None:
        raise ValueError("give MoveNet --weights or --checkpoint, not both")
    weights = options.checkpoint or options.weights or default_weights(options.variant)
    network = load_movenet(options.variant, weights)
    fine_tuned = weights.is_file() and is_train_checkpoint(weights)
    if options.fp16:
        network = network.half()
    beta = DEFAULT_MOVENET_BETA if options.beta is None else options.beta
    pose = MoveNetPose(network, beta, options.region, options.window).eval()
    size = VARIANTS[options.variant].input_size
    metadata = {
        **_common_metadata(VARIANTS[options.variant].name, options, (size, size)),
        contract.BETA: repr(beta),
        contract.REGION: options.region,
        contract.WINDOW: "" if pose.window is None else str(pose.window),
        contract.DEBIAS: "true",
        contract.DEBIAS_MODE: "paper",
        contract.COORDINATES: "dipr",
        # Google trained MoveNet on heatmaps; `dipr train` fine-tunes it through this head.
        contract.TRAINED_DEBIAS: "paper" if fine_tuned else "none",
        contract.SCORE_MEANING: SCORE_MEANING,
        **_source(weights),
    }
    return pose, metadata


def _build_simplebaseline(
    options: ExportOptions, arch: str
) -> tuple[SimpleBaselinePose, dict[str, str]]:
    depth = arch_depth(arch)
    if options.checkpoint is None:
        raise ValueError(
            f"{arch} has no embedded weights: pass --checkpoint (a `dipr train` checkpoint or an "
            "MMPose .pth)"
        )
    if options.weights is not None:
        raise ValueError("--weights is for MoveNet; pass the SimpleBaseline file as --checkpoint")
    loaded = load_simplebaseline(
        depth, options.checkpoint, resolve_mmpose_config(options.mmpose_config)
    )
    size = options.input_size or loaded.input_size
    if size is None:
        raise ValueError(
            f"{options.checkpoint.name} does not say its input size: pass --input-size WxH "
            "(e.g. 192x256 for MMPose's 256x192 configs) or --mmpose-config"
        )
    check_input_size(size)
    if loaded.source == "mmpose" and loaded.input_size and size != loaded.input_size:
        # Its head normalised coordinates by this heatmap size: another size changes the maps.
        raise ValueError(
            f"{options.checkpoint.name} was trained at {loaded.input_size[0]}x"
            f"{loaded.input_size[1]} (its head's linspaces), not {size[0]}x{size[1]}"
        )
    beta = options.beta if options.beta is not None else loaded.beta
    if beta is None:
        raise ValueError(
            f"{options.checkpoint.name}: an MMPose integral checkpoint does not hold its softmax "
            "β; pass --mmpose-config (ipr_res50, ipr_res50_dsnt, ipr_res50_debias or the config "
            "file) or --beta (1 for ipr_res50 and ipr_res50_dsnt, 10 for ipr_res50_debias)"
        )
    debias = options.debias or "paper"
    network = loaded.network.half() if options.fp16 else loaded.network
    pose = SimpleBaselinePose(network, size, beta, debias, loaded.coordinates).eval()
    metadata = {
        **_common_metadata(arch, options, size),
        contract.BETA: repr(float(beta)),
        contract.REGION: "global",
        contract.WINDOW: "",
        contract.DEBIAS: "false" if debias == "none" else "true",
        contract.DEBIAS_MODE: debias,
        contract.COORDINATES: loaded.coordinates,
        contract.TRAINED_DEBIAS: loaded.trained_debias or "",
        contract.SCORE_MEANING: SIMPLEBASELINE_SCORE_MEANING,
        **_source(options.checkpoint),
    }
    return pose, metadata


def pose_input_size(pose: nn.Module) -> tuple[int, int]:
    """(width, height) of a deployable model's input."""
    if isinstance(pose, SimpleBaselinePose):
        width, height = pose.input_size
        return int(width), int(height)
    size = pose.network.config.input_size
    return size, size


def output_names(pose: nn.Module) -> tuple[str, ...]:
    if isinstance(pose, SimpleBaselinePose):
        return pose.output_names
    return pose_output_names()


def export_onnx(pose: PoseModule, metadata: dict[str, str], path: Path) -> onnx.ModelProto:
    """Write the model with a dynamic batch axis and its metadata; check it with onnx.checker."""
    width, height = pose_input_size(pose)
    # Traced at batch 2 so that nothing specialises on a batch of 1.
    example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        pose,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[contract.INPUT],
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


def pose_output_names() -> tuple[str, ...]:
    """MoveNet's outputs (SimpleBaseline has no `keypoints_official`): see `output_names`."""
    return (
        contract.KEYPOINTS,
        contract.SCORES,
        contract.KEYPOINTS_RAW,
        contract.KEYPOINTS_OFFICIAL,
    )


def load_parity_images(folder: Path, size: int | tuple[int, int], count: int) -> np.ndarray:
    """`count` distinct uint8 RGB inputs from the photos in `folder`: whole frames, mirrored
    frames and centre crops, resized to the network input (a side, or (width, height))."""
    width, height = (size, size) if isinstance(size, int) else size
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not photos:
        raise FileNotFoundError(f"no parity photos (*.jpg, *.png) in {folder}")
    frames = []
    for photo in photos:
        bgr = cv2.imread(str(photo), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode {photo}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
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
    keypoint_outputs = [n for n in names if n != contract.SCORES]
    worst: dict[int, float] = {}
    for batch in batches:
        chunk = images[:batch]
        with torch.no_grad():
            expected = pose(torch.from_numpy(chunk))
        got = dict(zip(names, session.run(list(names), {contract.INPUT: chunk}), strict=True))
        worst[batch] = max(
            float(np.abs(got[name] - getattr(expected, name).numpy()).max())
            for name in keypoint_outputs
        )
    return worst
