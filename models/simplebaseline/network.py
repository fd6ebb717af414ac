"""SimpleBaseline (Xiao, Wu, Wei, ECCV 2018): a ResNet, three deconvolutions, a 1×1 conv to K maps.

    float RGB 0..255, NCHW → (x − mean) / std → ResNet (stride 32) → 3 × [ConvTranspose2d 4×4
    stride 2 (no bias), BN, ReLU] with 256 channels → Conv2d 1×1 (bias) → K logit maps at stride 4

This is the network of the paper's experiments and of MMPose's `ipr_res50*` configs (there the
deconvolutions sit in `head.simplebaseline_head`) and of its SimpleBaseline heatmap models (there
in `head` directly). Parameter names follow ours: `backbone.*` (= MMPose's), `head.deconv_layers.*`
(indices 0, 1 / 3, 4 / 6, 7 for conv, BN of each stage; ReLUs at 2, 5, 8 have no parameters) and
`head.final_layer.*`. `dipr.models.simplebaseline.mmpose_import` renames MMPose's keys to these.

The normalisation (MMPose's ImageNet mean/std on RGB 0..255) is part of the module, in buffers that
are not saved with the weights, so that training, export and every checkpoint agree on it.
"""

import torch
from torch import Tensor, nn

from dipr.core.keypoints import COCO_KEYPOINTS
from dipr.models.resnet import ResNet

# MMPose's PoseDataPreprocessor for these configs (RGB order, after bgr_to_rgb).
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
DECONV_CHANNELS = 256
NUM_DECONV = 3


class DeconvHead(nn.Module):
    def __init__(self, in_channels: int, num_keypoints: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(NUM_DECONV):
            # kernel 4, stride 2, padding 1, output_padding 0: exactly ×2 (MMPose HeatmapHead).
            layers += [
                nn.ConvTranspose2d(channels, DECONV_CHANNELS, 4, 2, 1, 0, bias=False),
                nn.BatchNorm2d(DECONV_CHANNELS),
                nn.ReLU(inplace=True),
            ]
            channels = DECONV_CHANNELS
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_keypoints, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # MMPose HeatmapHead's init: N(0, 0.001) convs, BN to identity. The tiny final layer
        # starts every map flat (logits ≈ 0), i.e. the soft-argmax at the map centre.
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Tensor) -> Tensor:
        return self.final_layer(self.deconv_layers(features))


class SimpleBaseline(nn.Module):
    """Float RGB pixels 0..255, NCHW → K heatmap logits at stride 4 (H/4 × W/4)."""

    def __init__(self, depth: int, num_keypoints: int = len(COCO_KEYPOINTS)) -> None:
        super().__init__()
        self.depth = depth
        self.num_keypoints = num_keypoints
        self.backbone = ResNet(depth)
        self.head = DeconvHead(self.backbone.out_channels, num_keypoints)
        # Not persistent: constants of the method, not weights (and absent from MMPose files).
        self.register_buffer("input_mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        x = (pixels - self.input_mean) / self.input_std
        return self.head(self.backbone(x))
