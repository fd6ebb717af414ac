"""ResNet-18/34/50/101/152 (He et al. 2016) as an explicit module, without torchvision.

The layout and the parameter names are those of MMPose's `ResNet` backbone with its defaults
(`style='pytorch'`, no deep stem, no average-pool downsampling), which are also torchvision's:
`conv1`, `bn1`, `layer{1..4}.{i}.conv{1,2[,3]}`, `bn{1,2[,3]}` and `downsample.{0,1}` (1×1 conv,
BN) on the first block of a stage whose shape changes. In the bottleneck the stride sits on the
3×3 conv (`conv2`), not on the first 1×1 ("pytorch" style, ResNet v1.5; MMPose's
`mmpose/models/backbones/resnet.py`: `conv1_stride = 1, conv2_stride = stride` when
style == 'pytorch', the default). The classifier is left out: `forward` returns the stride-32
features of the last stage (MMPose's `out_indices=(3,)`).
"""

from dataclasses import dataclass

from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3×3 convs (the first one strided), for ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, for ResNet-50/101/152."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


@dataclass(frozen=True)
class ResNetSpec:
    block: type[BasicBlock] | type[Bottleneck]
    blocks: tuple[int, int, int, int]

    @property
    def out_channels(self) -> int:
        return 512 * self.block.expansion


DEPTHS: dict[int, ResNetSpec] = {
    18: ResNetSpec(BasicBlock, (2, 2, 2, 2)),
    34: ResNetSpec(BasicBlock, (3, 4, 6, 3)),
    50: ResNetSpec(Bottleneck, (3, 4, 6, 3)),
    101: ResNetSpec(Bottleneck, (3, 4, 23, 3)),
    152: ResNetSpec(Bottleneck, (3, 8, 36, 3)),
}
STRIDE = 32  # the last stage's features are at 1/32 of the input


class ResNet(nn.Module):
    """Float NCHW (already normalised) → the stride-32 features of `layer4`."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unknown ResNet depth {depth}; known: {sorted(DEPTHS)}")
        spec = DEPTHS[depth]
        self.depth = depth
        self.out_channels = spec.out_channels
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = 64
        stages = []
        for index, (repeats, width) in enumerate(
            zip(spec.blocks, (64, 128, 256, 512), strict=True)
        ):
            stride = 1 if index == 0 else 2
            blocks = []
            for i in range(repeats):
                blocks.append(spec.block(channels, width, stride if i == 0 else 1))
                channels = width * spec.block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.reset_parameters()

    def reset_parameters(self, zero_init_residual: bool = True) -> None:
        """He init for convs, BN to identity; with `zero_init_residual` each block's last BN
        starts at 0 so every residual block starts as the identity (as MMPose's default
        `zero_init_residual=True`), which trains from scratch more stably."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
