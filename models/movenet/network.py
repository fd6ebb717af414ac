"""MoveNet SinglePose as an explicit PyTorch module.

A CenterNet on a MobileNetV2 + FPN feature extractor, written to match Google's TF graph layer for
layer (Thunder: width 1.75, 256×256 input; Lightning: width 1.0, 192×192). BatchNorm is already
folded into the convolution biases in the published graph, so every conv here has a bias and no
BatchNorm. All four heads run at stride 4.

TF pads "SAME" stride-2 convolutions asymmetrically (nothing before, one pixel after, for even
sizes); PyTorch's symmetric padding would shift every feature by half a pixel, so stride-2 layers
pad explicitly. Input sides must therefore be multiples of 32.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dipr.models.movenet.variants import MoveNetConfig

NUM_KEYPOINTS = 17


class TFConv(nn.Conv2d):
    """A conv with TF "SAME" padding (asymmetric at stride 2) and an optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
        activation: nn.Module | None = None,
    ) -> None:
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias
        )
        self.activation = activation if activation is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return self.activation(super().forward(x))


def depthwise(
    channels: int, stride: int = 1, bias: bool = True, activation: nn.Module | None = None
) -> TFConv:
    return TFConv(channels, channels, 3, stride, groups=channels, bias=bias, activation=activation)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand (ReLU6), 3×3 depthwise (ReLU6), 1×1 linear projection."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = (
            TFConv(in_channels, hidden, 1, activation=nn.ReLU6())
            if expansion != 1
            else nn.Identity()
        )
        self.depthwise = depthwise(hidden, stride, activation=nn.ReLU6())
        self.project = TFConv(hidden, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Returns the features at strides 4, 8, 16 and 32 (the last after the 1280-channel conv)."""

    def __init__(self, config: MoveNetConfig) -> None:
        super().__init__()
        self.stem = TFConv(3, config.stem_channels, 3, stride=2, activation=nn.ReLU6())
        blocks: list[nn.Module] = []
        channels = config.stem_channels
        for expansion, out_channels, repeats, first_stride in config.stages:
            for i in range(repeats):
                stride = first_stride if i == 0 else 1
                blocks.append(InvertedResidual(channels, out_channels, expansion, stride))
                channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = TFConv(channels, 1280, 1, activation=nn.ReLU6())
        # The FPN taps the last block of the stride-4, 8 and 16 stages (blocks 2, 5 and 9).
        self.taps = (2, 5, 9)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        x = self.stem(x)
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                features.append(x)
        features.append(self.head(x))
        return features


class SeparableConv(nn.Sequential):
    """3×3 depthwise without bias, then 1×1 pointwise with bias and ReLU (Keras SeparableConv2D)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            depthwise(in_channels, bias=False),
            TFConv(in_channels, out_channels, 1, activation=nn.ReLU()),
        )


class FPN(nn.Module):
    """Top-down path: 1×1 lateral convs, ×2 bilinear upsampling (half-pixel centres), sum,
    refine."""

    def __init__(self, tap_channels: tuple[int, int, int]) -> None:
        super().__init__()
        s4, s8, s16 = tap_channels
        self.top = TFConv(1280, 64, 1)
        self.laterals = nn.ModuleList([TFConv(s16, 64, 1), TFConv(s8, 32, 1), TFConv(s4, 24, 1)])
        self.refines = nn.ModuleList(
            [SeparableConv(64, 32), SeparableConv(32, 24), SeparableConv(24, 24)]
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        s4, s8, s16, s32 = features
        x = self.top(s32)
        for lateral, refine, tap in zip(self.laterals, self.refines, (s16, s8, s4), strict=True):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = refine(x + lateral(tap))
        return x


class Head(nn.Sequential):
    """A CenterNet head: separable 3×3 conv to 96 channels, then 1×1 to the outputs."""

    def __init__(self, out_channels: int) -> None:
        super().__init__(SeparableConv(24, 96), TFConv(96, out_channels, 1))


def normalize_pixels(pixels: Tensor, mean: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """The published graphs' input normalisation, op for op: (x − mean[c]) · scale[c] − shift."""
    return (pixels - mean.view(1, 3, 1, 1)) * scale.view(1, 3, 1, 1) - shift


class MoveNetOutputs(NamedTuple):
    """Raw head outputs at stride 4, NCHW. Regression and offsets are (y, x) pairs per joint."""

    heatmap_logits: Tensor  # [N, 17, h, w]
    center_logits: Tensor  # [N, 1, h, w]
    regress: Tensor  # [N, 34, h, w]: joint minus person centre, in heatmap cells
    offset: Tensor  # [N, 34, h, w]: sub-cell refinement of each joint's heatmap peak


class MoveNet(nn.Module):
    """The network proper: float RGB pixels, NCHW → the four CenterNet heads."""

    def __init__(self, config: MoveNetConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = MobileNetV2(config)
        self.fpn = FPN(config.fpn_inputs)
        self.heatmap = Head(NUM_KEYPOINTS)
        self.center = Head(1)
        self.regress = Head(2 * NUM_KEYPOINTS)
        self.offset = Head(2 * NUM_KEYPOINTS)
        # Constants of the published graph, imported with the weights (stored there in fp16, so
        # e.g. the input scale is 0.00784302, not 1/127.5): the normalisation
        # (x - mean) * scale - shift, and the official decode's person-centre prior
        # 1 / (distance to the map centre + 1.8) and joint distance bias (1.7998).
        size = config.heatmap_size
        self.register_buffer("input_mean", torch.zeros(3))
        self.register_buffer("input_scale", torch.full((3,), 1 / 127.5))
        self.register_buffer("input_shift", torch.tensor(1.0))
        self.register_buffer("center_prior", torch.ones(size, size))
        self.register_buffer("joint_distance_bias", torch.tensor(1.8))

    def forward(self, pixels: Tensor) -> MoveNetOutputs:
        """pixels: float RGB in 0..255, NCHW."""
        x = normalize_pixels(pixels, self.input_mean, self.input_scale, self.input_shift)
        features = self.fpn(self.backbone(x))
        return MoveNetOutputs(
            heatmap_logits=self.heatmap(features),
            center_logits=self.center(features),
            regress=self.regress(features),
            offset=self.offset(features),
        )
