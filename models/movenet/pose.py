"""The deployable MoveNet: uint8 RGB images in, debiased keypoints in input pixels out.

    image uint8 [N, H, W, 3] → float NCHW → MoveNet (normalises inside) → sigmoid heatmaps
      (flip test: the crops and their mirrors in one batch, maps averaged, `dipr.models.flip`)
      → region Ω per joint → soft-argmax debiased over Ω (fp32) → input pixels

Regions:
- "global": Ω is the whole heatmap (the paper's setting).
- "window": a k×k window around each channel's own arg-max.
- "person": a k×k window around the cell that MoveNet's own decode picks for the joint (centre
  head → regression → distance-weighted arg-max), so a joint of the person in the middle of the
  crop is not pulled toward a neighbour's peak.

Outputs, all float32:
- keypoints [N, K, 2]: (x, y) debiased, input pixel index coordinates (pixel centres at integers);
  a heatmap coordinate j maps to (j + 0.5)·4 − 0.5 (see `dipr.models.coordinates`).
- scores [N, K]: MoveNet's keypoint confidence, the sigmoid heatmap at the joint's decoded cell —
  the network's probability that the joint is visible there (≈0.3 is the usual visibility
  threshold) — set to 0 where the debiasing was ill-conditioned and fell back to the raw estimate.
- keypoints_raw [N, K, 2]: the uncorrected soft-argmax over the same Ω, input pixels.
- keypoints_official [N, K, 2]: MoveNet's published decode (cell + offset head), input pixels,
  kept for comparison in evaluation.
"""

from typing import NamedTuple

from torch import Tensor, nn

from dipr.core.keypoints import flip_permutation
from dipr.models.coordinates import heatmap_to_input_pixels, normalized_to_input_pixels
from dipr.models.debias import integral_estimate
from dipr.models.flip import with_mirrors
from dipr.models.movenet.decode import flip_averaged, maps_of, official_decode, symmetric_prior
from dipr.models.movenet.network import MoveNet, MoveNetOutputs
from dipr.models.movenet.variants import STRIDE
from dipr.models.regions import REGIONS, Region


class PoseOutputs(NamedTuple):
    keypoints: Tensor
    scores: Tensor
    keypoints_raw: Tensor
    keypoints_official: Tensor


class MoveNetPose(nn.Module):
    output_names: tuple[str, ...] = PoseOutputs._fields

    def __init__(
        self,
        network: MoveNet,
        beta: float,
        region: Region = "person",
        window: int = 7,
        flip_test: bool = False,
    ) -> None:
        super().__init__()
        if region not in REGIONS:
            raise ValueError(f"unknown region {region!r}; known: {', '.join(REGIONS)}")
        if beta <= 0:
            raise ValueError(f"beta must be positive, got {beta}")
        self.network = network
        self.beta = float(beta)
        self.region = region
        self.window = window if region != "global" else None
        self.flip_test = flip_test

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height): the variant's square input."""
        side = self.network.config.input_size
        return side, side

    def forward(self, image: Tensor) -> PoseOutputs:
        dtype = self.network.input_scale.dtype  # fp16 when the backbone was exported in fp16
        # Cast first: TensorRT takes a uint8 input only straight into a Cast (then the layout).
        pixels = image.to(dtype).permute(0, 3, 1, 2)
        count = pixels.shape[0]
        if self.flip_test:
            pixels = with_mirrors(pixels)
        # The head always runs in fp32: a softmax over β·H in fp16 overflows near β·H ≈ 11.
        maps = maps_of(MoveNetOutputs(*(t.float() for t in self.network(pixels))))
        prior = None
        if self.flip_test:
            maps = flip_averaged(maps, count, flip_permutation())
            prior = symmetric_prior(self.network)
        decoded = official_decode(self.network, maps, prior)
        centers = decoded.cells if self.region == "person" else None
        estimate = integral_estimate(decoded.heatmaps, self.beta, self.window, centers)
        return PoseOutputs(
            keypoints=heatmap_to_input_pixels(estimate.debiased, STRIDE),
            scores=decoded.scores * estimate.reliable.to(decoded.scores.dtype),
            keypoints_raw=heatmap_to_input_pixels(estimate.raw, STRIDE),
            keypoints_official=normalized_to_input_pixels(
                decoded.normalized, self.network.config.input_size
            ),
        )
