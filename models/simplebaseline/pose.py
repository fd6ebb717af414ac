"""The deployable SimpleBaseline: uint8 RGB images in, keypoints in input pixels out.

    image uint8 [N, H, W, 3] → float NCHW → SimpleBaseline (normalises inside) → logits
      (flip test: the crops and their mirrors in one batch, logits averaged, `dipr.models.flip`)
      → integral head per debias mode, fp32 (`heads.integral_head`) → input pixels

Outputs, all float32 (the dipr ONNX contract, `dipr.core.pose_contract`; no `keypoints_official`):
- keypoints [N, K, 2]: (x, y) per the debias mode ("paper", "mmpose" or "none"), input pixel
  index coordinates (pixel centres at integers).
- scores [N, K]: softmax mass within ±2 cells of the arg-max, 0 where the correction fell back
  (see `heads`).
- keypoints_raw [N, K, 2]: the uncorrected soft-argmax, input pixels.

Heatmap index → input pixel follows the convention the network was trained with
(`variants.Coordinates`): "dipr" (cell centres, (j + 0.5)·4 − 0.5) for `dipr train` networks,
"mmpose" (j·4 − 0.5) for MMPose checkpoints.
"""

from typing import NamedTuple

from torch import Tensor, nn

from dipr.core.keypoints import flip_permutation
from dipr.models.coordinates import heatmap_to_input_pixels, mmpose_heatmap_to_input_pixels
from dipr.models.flip import average_with_mirrors, grid_shift, with_mirrors
from dipr.models.simplebaseline.heads import integral_head
from dipr.models.simplebaseline.network import SimpleBaseline
from dipr.models.simplebaseline.variants import (
    COORDINATES,
    DEBIAS_MODES,
    STRIDE,
    Coordinates,
    DebiasMode,
    check_input_size,
)


class SimpleBaselineOutputs(NamedTuple):
    keypoints: Tensor
    scores: Tensor
    keypoints_raw: Tensor


def to_input_pixels(coords: Tensor, coordinates: Coordinates) -> Tensor:
    if coordinates == "dipr":
        return heatmap_to_input_pixels(coords, STRIDE)
    return mmpose_heatmap_to_input_pixels(coords, STRIDE)


class SimpleBaselinePose(nn.Module):
    output_names: tuple[str, ...] = SimpleBaselineOutputs._fields

    def __init__(
        self,
        network: SimpleBaseline,
        input_size: tuple[int, int],
        beta: float,
        debias: DebiasMode = "paper",
        coordinates: Coordinates = "dipr",
        flip_test: bool = False,
    ) -> None:
        super().__init__()
        check_input_size(input_size)
        if debias not in DEBIAS_MODES:
            raise ValueError(f"unknown debias mode {debias!r}; known: {', '.join(DEBIAS_MODES)}")
        if coordinates not in COORDINATES:
            raise ValueError(f"unknown coordinates {coordinates!r}; known: {COORDINATES}")
        if not 0 < beta < float("inf"):
            raise ValueError(f"beta must be a finite positive number, got {beta}")
        self.network = network
        self.input_size = tuple(input_size)  # (width, height)
        self.beta = float(beta)
        self.debias = debias
        self.coordinates = coordinates
        self.flip_test = flip_test
        # MMPose's maps sit one cell off their mirror's (`dipr.models.flip`).
        self.flip_shift = grid_shift(
            input_size[0] // STRIDE, input_size[0], lambda c: to_input_pixels(c, coordinates)
        )

    def forward(self, image: Tensor) -> SimpleBaselineOutputs:
        dtype = self.network.input_mean.dtype  # fp16 when the backbone was exported in fp16
        # Cast first: TensorRT takes a uint8 input only straight into a Cast (then the layout).
        pixels = image.to(dtype).permute(0, 3, 1, 2)
        count = pixels.shape[0]
        if self.flip_test:
            pixels = with_mirrors(pixels)
        logits = self.network(pixels)
        if self.flip_test:
            logits = average_with_mirrors(
                logits.float(), count, self.flip_shift, flip_permutation()
            )
        head = integral_head(logits, self.beta, self.debias)
        return SimpleBaselineOutputs(
            keypoints=to_input_pixels(head.keypoints, self.coordinates),
            scores=head.scores,
            keypoints_raw=to_input_pixels(head.raw, self.coordinates),
        )
