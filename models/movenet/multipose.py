"""MoveNet MultiPose Lightning, the person detector, as an explicit PyTorch module.

The network is the single-pose family's (`dipr.models.movenet.network`: MobileNetV2 + FPN, here at
width 1.5 on a 256×256 input) with six CenterNet heads at stride 4 instead of four: person centre,
box size and box offset, keypoint heatmaps, keypoint regression and keypoint offsets. The decode
that the published graph runs after them is `dipr.models.movenet.multipose_decode`.

`MultiPoseDetector` is the deployable module, the detector contract (`dipr.core.detector_contract`):

    image uint8 [N, 256, 256, 3] → float NCHW → MultiPoseNet (normalises inside) → decode (fp32)
      → boxes [N, P, 4] (x1, y1, x2, y2, input pixel edges), box_scores [N, P],
        keypoints [N, P, K, 2] (x, y, input pixel indices), keypoint_scores [N, P, K]

P = 6 candidates per image, in the graph's order (by person-centre score, best first).
"""

from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from dipr.models.coordinates import normalized_to_input_pixels
from dipr.models.movenet.multipose_decode import MultiPoseDecoded, decode_multipose
from dipr.models.movenet.network import (
    FPN,
    NUM_KEYPOINTS,
    Head,
    MobileNetV2,
    normalize_pixels,
)
from dipr.models.movenet.variants import MULTIPOSE, MoveNetConfig
from dipr.models.registry import detector_architecture

ARCH_NAME = MULTIPOSE.name


class MultiPoseHeads(NamedTuple):
    """Raw head outputs at stride 4, NCHW. Pairs are (y, x), in heatmap cells."""

    center_logits: Tensor  # [N, 1, h, w]
    box_scale: Tensor  # [N, 2, h, w]: box height and width at each person centre
    box_offset: Tensor  # [N, 2, h, w]: box centre minus the centre cell
    heatmap_logits: Tensor  # [N, 17, h, w]
    regress: Tensor  # [N, 34, h, w]: joint minus person centre
    offset: Tensor  # [N, 34, h, w]: sub-cell refinement of each joint's heatmap cell


class MultiPoseNet(nn.Module):
    """The network proper: float RGB pixels (0..255), NCHW → the six CenterNet heads."""

    def __init__(self, config: MoveNetConfig = MULTIPOSE) -> None:
        super().__init__()
        self.config = config
        self.backbone = MobileNetV2(config)
        self.fpn = FPN(config.fpn_inputs)
        self.center = Head(1)
        self.box_scale = Head(2)
        self.box_offset = Head(2)
        self.heatmap = Head(NUM_KEYPOINTS)
        self.regress = Head(2 * NUM_KEYPOINTS)
        self.offset = Head(2 * NUM_KEYPOINTS)
        # Constants of the published graph, imported with the weights (stored there in fp16):
        # the input normalisation (x − mean) · scale − shift; the tolerance under which a centre
        # cell equals its 5×5 max-pool (a local maximum, ≈1e-6); the joint distance weighting
        # exp(−d² / (min(h, w) · joint_distance_scale)) (≈0.3); and the keypoint score above which
        # a joint counts toward the person's score (≈0.127).
        self.register_buffer("input_mean", torch.zeros(3))
        self.register_buffer("input_scale", torch.full((3,), 1 / 127.5))
        self.register_buffer("input_shift", torch.tensor(1.0))
        self.register_buffer("peak_tolerance", torch.tensor(1e-6))
        self.register_buffer("joint_distance_scale", torch.tensor(0.3))
        self.register_buffer("keypoint_score_threshold", torch.tensor(0.127))

    @property
    def input_size(self) -> int:
        """The side of the square input the network was trained for."""
        return self.config.input_size

    def forward(self, pixels: Tensor) -> MultiPoseHeads:
        """pixels: float RGB in 0..255, NCHW."""
        x = normalize_pixels(pixels, self.input_mean, self.input_scale, self.input_shift)
        features = self.fpn(self.backbone(x))
        return MultiPoseHeads(
            center_logits=self.center(features),
            box_scale=self.box_scale(features),
            box_offset=self.box_offset(features),
            heatmap_logits=self.heatmap(features),
            regress=self.regress(features),
            offset=self.offset(features),
        )


class DetectorOutputs(NamedTuple):
    """The detector contract's outputs, in its order (`dipr.core.detector_contract.OUTPUTS`)."""

    boxes: Tensor  # [N, P, 4] x1, y1, x2, y2, input pixel edges
    box_scores: Tensor  # [N, P]
    keypoints: Tensor  # [N, P, K, 2] x, y, input pixel indices
    keypoint_scores: Tensor  # [N, P, K]


class MultiPoseDetector(nn.Module):
    """uint8 RGB NHWC images → the detector contract's four outputs (see the module docstring)."""

    output_names: tuple[str, ...] = DetectorOutputs._fields

    def __init__(self, network: MultiPoseNet) -> None:
        super().__init__()
        self.network = network

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height)."""
        side = self.network.input_size
        return side, side

    def decode(self, image: Tensor) -> MultiPoseDecoded:
        """The graph's own outputs: `identity()` is its `Identity` tensor, and the maps."""
        dtype = self.network.input_scale.dtype  # fp16 when the backbone was exported in fp16
        # Cast first: TensorRT takes a uint8 input only straight into a Cast (then the layout).
        pixels = image.to(dtype).permute(0, 3, 1, 2)
        # The decode always runs in fp32, as the graph does: its box and joint arithmetic is in
        # heatmap cells, where fp16 would round the 64-cell coordinates to 1/32 of a cell.
        heads = MultiPoseHeads(*(t.float() for t in self.network(pixels)))
        return decode_multipose(self.network, heads)

    def forward(self, image: Tensor) -> DetectorOutputs:
        decoded = self.decode(image)
        side = self.network.input_size
        # (ymin, xmin, ymax, xmax) normalised to the input's edges → x1, y1, x2, y2 edges.
        boxes = decoded.boxes[..., (1, 0, 3, 2)] * side
        return DetectorOutputs(
            boxes=boxes,
            box_scores=decoded.person_scores,
            keypoints=normalized_to_input_pixels(decoded.keypoints.flip(-1), side),
            keypoint_scores=decoded.keypoint_scores,
        )


def default_multipose_weights() -> Path:
    """The committed weights, where the detector's registry record says."""
    return detector_architecture(ARCH_NAME).weights


def load_multipose(path: Path | None = None) -> MultiPoseNet:
    """The network in eval mode with fp32 parameters, from the committed weights by default."""
    path = path or default_multipose_weights()
    if not path.is_file():
        raise FileNotFoundError(
            f"MoveNet MultiPose weights not found at {path}; regenerate them with "
            "`python -m dipr.models.movenet.tfjs_import --variant multipose`"
        )
    network = MultiPoseNet()
    try:
        state = {k: v.to(torch.float32) for k, v in load_file(path).items()}
        network.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as error:  # not safetensors; other names or shapes
        raise ValueError(f"{path} does not hold MoveNet MultiPose weights: {error}") from error
    return network.eval()
