"""Export a deployable pose network to ONNX and prove it computes what PyTorch computes."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

from dipr.export import contract
from dipr.models.keypoints import COCO_KEYPOINTS, COCO_SKELETON
from dipr.models.movenet.pose import MoveNetPose
from dipr.models.movenet.variants import VARIANTS
from dipr.models.movenet.weights import default_weights, load_movenet
from dipr.models.regions import Region

OPSET = 18  # torch.logsumexp exported at opset 17 gave an invalid model
SCORE_MEANING = (
    "MoveNet keypoint confidence: the sigmoid heatmap at the joint's decoded cell, "
    "the network's probability that the joint is visible there; 0 where the "
    "debiasing was ill-conditioned and the raw estimate was used"
)


@dataclass(frozen=True)
class ExportOptions:
    variant: str = "thunder"
    beta: float = 5.0
    region: Region = "person"
    window: int = 7
    weights: Path | None = None
    fp16: bool = False
    version: str = "1"


def build_pose_model(options: ExportOptions) -> tuple[MoveNetPose, dict[str, str]]:
    """The deployable network and the metadata that describes it."""
    weights = options.weights or default_weights(options.variant)
    network = load_movenet(options.variant, weights)
    if options.fp16:
        network = network.half()
    pose = MoveNetPose(network, options.beta, options.region, options.window).eval()
    size = VARIANTS[options.variant].input_size
    metadata = {
        contract.NAME: VARIANTS[options.variant].name,
        contract.VERSION: options.version,
        contract.INPUT_SIZE: json.dumps([size, size]),
        contract.KEYPOINT_NAMES: json.dumps(list(COCO_KEYPOINTS)),
        contract.SKELETON: json.dumps([list(limb) for limb in COCO_SKELETON]),
        contract.BETA: repr(options.beta),
        contract.REGION: options.region,
        contract.WINDOW: "" if pose.window is None else str(pose.window),
        contract.DEBIAS: "true",
        contract.SCORE_MEANING: SCORE_MEANING,
        contract.SOURCE_WEIGHTS: weights.name,
        contract.SOURCE_SHA256: hashlib.sha256(weights.read_bytes()).hexdigest(),
        contract.PRECISION: "fp16" if options.fp16 else "fp32",
    }
    return pose, metadata


def export_onnx(pose: MoveNetPose, metadata: dict[str, str], path: Path) -> onnx.ModelProto:
    """Write the model with a dynamic batch axis and its metadata; check it with onnx.checker."""
    size = pose.network.config.input_size
    # Traced at batch 2 so that nothing specialises on a batch of 1.
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        pose,
        (example,),
        dynamo=True,
        opset_version=OPSET,
        input_names=[contract.INPUT],
        output_names=list(pose_output_names()),
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
    return (
        contract.KEYPOINTS,
        contract.SCORES,
        contract.KEYPOINTS_RAW,
        contract.KEYPOINTS_OFFICIAL,
    )


def load_parity_images(folder: Path, size: int, count: int) -> np.ndarray:
    """`count` distinct uint8 RGB inputs from the photos in `folder`: whole frames, mirrored
    frames and centre crops, resized to the network input."""
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
        cv2.resize(np.ascontiguousarray(f), (size, size), interpolation=cv2.INTER_AREA)
        for f in frames
    ]
    return np.stack([inputs[i % len(inputs)] for i in range(count)])


def parity(
    pose: MoveNetPose, onnx_path: Path, images: np.ndarray, batches: tuple[int, ...] = (1, 3, 8)
) -> dict[int, float]:
    """Max |ORT − PyTorch| over all keypoint outputs (input pixels) at each batch size."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst: dict[int, float] = {}
    for batch in batches:
        chunk = images[:batch]
        with torch.no_grad():
            expected = pose(torch.from_numpy(chunk))
        got = dict(
            zip(pose_output_names(), session.run(None, {contract.INPUT: chunk}), strict=True)
        )
        worst[batch] = max(
            float(np.abs(got[name] - getattr(expected, name).numpy()).max())
            for name in (contract.KEYPOINTS, contract.KEYPOINTS_RAW, contract.KEYPOINTS_OFFICIAL)
        )
    return worst
