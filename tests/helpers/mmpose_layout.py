"""Synthetic checkpoints laid out exactly like MMPose's SimpleBaseline ones (for the tests).

The key names and shapes are written out here from MMPose's source (ResNet `style='pytorch'`,
`IntegralRegressionHead.simplebaseline_head` = HeatmapHead deconv/BN/ReLU ×3 + 1×1 final layer,
`linspace_x` [1, 1, 1, w] = arange(w)/w, `linspace_y` [1, 1, h, 1] = arange(h)/h), independently
of `dipr.models`, so that a renaming mistake in the importer cannot cancel out.
"""

import torch
from torch import Tensor

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
IPR_RES50_DEBIAS_CFG = """model = dict(
    type='TopdownPoseEstimator',
    backbone=dict(type='ResNet', depth=50),
    head=dict(
        type='DSNTHead',
        in_channels=2048,
        in_featuremap_size=(8, 8),
        num_joints=17,
        debias=True,
        beta=10.,
        decoder=dict(type='IntegralRegressionLabel', input_size=(256, 256), heatmap_size=(64, 64),
                     sigma=2.0, normalize=True)))
"""


def _bn(prefix: str, channels: int, generator: torch.Generator) -> dict[str, Tensor]:
    return {
        f"{prefix}.weight": 0.5 + torch.rand(channels, generator=generator),
        f"{prefix}.bias": 0.1 * torch.randn(channels, generator=generator),
        f"{prefix}.running_mean": 0.1 * torch.randn(channels, generator=generator),
        f"{prefix}.running_var": 0.5 + torch.rand(channels, generator=generator),
        f"{prefix}.num_batches_tracked": torch.tensor(1000, dtype=torch.long),
    }


def _conv(key: str, out_c: int, in_c: int, k: int, generator: torch.Generator) -> dict:
    fan_in = in_c * k * k
    return {key: torch.randn(out_c, in_c, k, k, generator=generator) * (1.0 / fan_in) ** 0.5}


def mmpose_state_dict(
    depth: int = 50,
    heatmap_size: tuple[int, int] | None = (64, 64),
    head_prefix: str = "head.simplebaseline_head.",
    seed: int = 0,
    logit_scale: float = 3.0,
) -> dict[str, Tensor]:
    """Random weights in MMPose's layout. heatmap_size (w, h) adds the integral head's
    linspaces; None makes a heatmap-head checkpoint (use head_prefix "head.")."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, Tensor] = {}
    sd |= _conv("backbone.conv1.weight", 64, 3, 7, g)
    sd |= _bn("backbone.bn1", 64, g)
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    in_c = 64
    for stage, (repeats, width) in enumerate(
        zip(BLOCKS[depth], (64, 128, 256, 512), strict=True), start=1
    ):
        out_c = width * expansion
        for i in range(repeats):
            p = f"backbone.layer{stage}.{i}"
            if bottleneck:
                sd |= _conv(f"{p}.conv1.weight", width, in_c, 1, g)
                sd |= _bn(f"{p}.bn1", width, g)
                sd |= _conv(f"{p}.conv2.weight", width, width, 3, g)
                sd |= _bn(f"{p}.bn2", width, g)
                sd |= _conv(f"{p}.conv3.weight", out_c, width, 1, g)
                sd |= _bn(f"{p}.bn3", out_c, g)
            else:
                sd |= _conv(f"{p}.conv1.weight", width, in_c, 3, g)
                sd |= _bn(f"{p}.bn1", width, g)
                sd |= _conv(f"{p}.conv2.weight", width, width, 3, g)
                sd |= _bn(f"{p}.bn2", width, g)
            if i == 0 and (stage > 1 or in_c != out_c):
                sd |= _conv(f"{p}.downsample.0.weight", out_c, in_c, 1, g)
                sd |= _bn(f"{p}.downsample.1", out_c, g)
            in_c = out_c
    for index in (0, 3, 6):
        # ConvTranspose2d weights are [in, out, k, k]
        sd[f"{head_prefix}deconv_layers.{index}.weight"] = (
            torch.randn(in_c, 256, 4, 4, generator=g) * (1.0 / (in_c * 4)) ** 0.5
        )
        sd |= _bn(f"{head_prefix}deconv_layers.{index + 1}", 256, g)
        in_c = 256
    sd[f"{head_prefix}final_layer.weight"] = torch.randn(17, 256, 1, 1, generator=g) * (
        logit_scale / 256**0.5
    )
    sd[f"{head_prefix}final_layer.bias"] = torch.zeros(17)
    if heatmap_size is not None:
        w, h = heatmap_size
        sd["head.linspace_x"] = (torch.arange(w, dtype=torch.float32) / w).reshape(1, 1, 1, w)
        sd["head.linspace_y"] = (torch.arange(h, dtype=torch.float32) / h).reshape(1, 1, h, 1)
    return sd


def save_mmengine_checkpoint(path, state_dict: dict[str, Tensor], cfg: str | None = None) -> None:
    """As MMEngine saves: {'meta': {...}, 'state_dict': ...} (no optimizer, as published)."""
    meta: dict[str, object] = {"epoch": 210, "iter": 485000, "mmpose_version": "1.3.1"}
    if cfg is not None:
        meta["cfg"] = cfg
    torch.save({"meta": meta, "state_dict": state_dict}, path)
