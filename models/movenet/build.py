"""MoveNet's builders (pose models and the MultiPose detector), reached through their registry
records (`dipr.models.registry`)."""

from torch import nn

from dipr.models.movenet.multipose import MultiPoseDetector, load_multipose
from dipr.models.movenet.pose import MoveNetPose
from dipr.models.movenet.weights import load_movenet
from dipr.models.registry import (
    DEFAULT_WINDOW,
    Architecture,
    BuiltDetector,
    BuiltPose,
    DetectorArchitecture,
    DetectorExportRequest,
    ExportRequest,
    TrainingRequest,
)
from dipr.models.train_checkpoint import is_train_checkpoint

SCORE_MEANING = (
    "MoveNet keypoint confidence: the sigmoid heatmap at the joint's decoded cell, "
    "the network's probability that the joint is visible there; 0 where the "
    "debiasing was ill-conditioned and the raw estimate was used"
)


def build_for_export(arch: Architecture, request: ExportRequest) -> BuiltPose:
    """Its embedded weights, other weights in their layout, or a `dipr train` fine-tuning."""
    network = load_movenet(arch.variant, request.source)
    if request.fp16:
        network = network.half()
    beta = arch.export_beta if request.beta is None else request.beta
    assert beta is not None  # every MoveNet record has an export β
    window = DEFAULT_WINDOW if request.window is None else request.window
    pose = MoveNetPose(network, beta, request.region, window, request.flip_test).eval()
    fine_tuned = is_train_checkpoint(request.source)
    return BuiltPose(
        pose=pose,
        input_size=pose.input_size,
        beta=pose.beta,
        coordinates="dipr",
        # Google trained MoveNet on heatmaps; `dipr train` fine-tunes it through this head.
        trained_debias="paper" if fine_tuned else "none",
        score_meaning=SCORE_MEANING,
    )


def build_for_training(arch: Architecture, request: TrainingRequest) -> tuple[nn.Module, nn.Module]:
    movenet = load_movenet(arch.variant, request.pretrained)  # the embedded weights by default
    window = DEFAULT_WINDOW if request.window is None else request.window
    return MoveNetPose(movenet, request.beta, request.region, window), movenet


def build_detector_for_export(
    arch: DetectorArchitecture, request: DetectorExportRequest
) -> BuiltDetector:
    """MoveNet MultiPose: its embedded weights or others in their layout; fp16 runs the network in
    fp16 and keeps the decode in fp32."""
    network = load_multipose(request.source)
    if request.fp16:
        network = network.half()
    detector = MultiPoseDetector(network).eval()
    return BuiltDetector(
        detector=detector, input_size=detector.input_size, max_persons=arch.max_persons
    )
