"""MoveNet's official single-pose decode, re-implemented in PyTorch (batched, ONNX-exportable).

As in the published graph: pick the person centre (centre heatmap × a prior favouring the middle
of the crop), regress every joint from it, take the keypoint heatmap's arg-max weighted by
1 / (distance to the regressed joint + 1.8), add the offset head there. Score = heatmap value there.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from dipr.models.movenet.network import MoveNet, MoveNetOutputs


class Decoded(NamedTuple):
    cells: Tensor  # [N, K, 2] (x, y) integer heatmap cell chosen for each joint, as float
    # [N, K, 2] (x, y) as the published output: (cell + offset) / map size, in 0..1 across the
    # crop, edges at 0 and 1 (so input pixel index = value · input size − 0.5).
    normalized: Tensor
    scores: Tensor  # [N, K] sigmoid heatmap at the chosen cell
    heatmaps: Tensor  # [N, K, h, w] sigmoid keypoint heatmaps


def _gather_cells(maps: Tensor, flat_index: Tensor) -> Tensor:
    """maps [N, C, h, w], flat_index [N, C] → the value of each channel at its own index, [N, C]."""
    return maps.flatten(2).gather(2, flat_index.unsqueeze(2)).squeeze(2)


def official_decode(model: MoveNet, outputs: MoveNetOutputs) -> Decoded:
    heatmaps = torch.sigmoid(outputs.heatmap_logits)
    n, k, h, w = heatmaps.shape
    centre = torch.sigmoid(outputs.center_logits[:, 0]) * model.center_prior
    centre_index = centre.flatten(1).argmax(dim=1)  # [N]
    centre_y = torch.div(centre_index, w, rounding_mode="floor")
    centre_x = centre_index - centre_y * w

    regress = (
        outputs.regress.flatten(2)
        .gather(2, centre_index.view(n, 1, 1).expand(n, 2 * k, 1))
        .view(n, k, 2)
    )  # (dy, dx) per joint
    joint_y = centre_y.view(n, 1, 1, 1).to(regress.dtype) + regress[..., 0].view(n, k, 1, 1)
    joint_x = centre_x.view(n, 1, 1, 1).to(regress.dtype) + regress[..., 1].view(n, k, 1, 1)
    grid_y = torch.arange(h, dtype=heatmaps.dtype, device=heatmaps.device).view(1, 1, h, 1)
    grid_x = torch.arange(w, dtype=heatmaps.dtype, device=heatmaps.device).view(1, 1, 1, w)
    distance = torch.sqrt((grid_y - joint_y) ** 2 + (grid_x - joint_x) ** 2)
    weighted = heatmaps / (distance + model.joint_distance_bias)
    joint_index = weighted.flatten(2).argmax(dim=2)  # [N, K]
    cell_y = torch.div(joint_index, w, rounding_mode="floor")
    cell_x = joint_index - cell_y * w

    offsets = (
        outputs.offset.view(n, k, 2, h * w)
        .gather(3, joint_index.view(n, k, 1, 1).expand(n, k, 2, 1))
        .squeeze(3)
    )  # (dy, dx)
    cells = torch.stack((cell_x, cell_y), dim=2).to(heatmaps.dtype)
    normalized = (cells + offsets.flip(2)) / torch.tensor(
        [w, h], dtype=cells.dtype, device=cells.device
    )
    return Decoded(cells, normalized, _gather_cells(heatmaps, joint_index), heatmaps)
