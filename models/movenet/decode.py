"""MoveNet's official single-pose decode, re-implemented in PyTorch (batched, ONNX-exportable).

As in the published graph: pick the person centre (centre heatmap × a prior favouring the middle
of the crop), regress every joint from it, take the keypoint heatmap's arg-max weighted by
1 / (distance to the regressed joint + 1.8), add the offset head there. Score = heatmap value there.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from dipr.models.flip import unmirror
from dipr.models.movenet.network import MoveNet, MoveNetOutputs


class Decoded(NamedTuple):
    cells: Tensor  # [N, K, 2] (x, y) integer heatmap cell chosen for each joint, as float
    # [N, K, 2] (x, y) as the published output: (cell + offset) / map size, in 0..1 across the
    # crop, edges at 0 and 1 (so input pixel index = value · input size − 0.5).
    normalized: Tensor
    scores: Tensor  # [N, K] sigmoid heatmap at the chosen cell
    heatmaps: Tensor  # [N, K, h, w] sigmoid keypoint heatmaps


class MoveNetMaps(NamedTuple):
    """What the decode reads of MoveNet's four heads (stride 4, NCHW, fp32)."""

    heatmaps: Tensor  # [N, K, h, w] sigmoid keypoint heatmaps
    centres: Tensor  # [N, 1, h, w] sigmoid person-centre heatmap
    regress: Tensor  # [N, 2K, h, w] (dy, dx) per joint: joint minus person centre, in cells
    offset: Tensor  # [N, 2K, h, w] (dy, dx) per joint: the peak within its cell, 0..1


def maps_of(outputs: MoveNetOutputs) -> MoveNetMaps:
    return MoveNetMaps(
        heatmaps=torch.sigmoid(outputs.heatmap_logits),
        centres=torch.sigmoid(outputs.center_logits),
        regress=outputs.regress,
        offset=outputs.offset,
    )


def flip_averaged(maps: MoveNetMaps, count: int, joints: tuple[int, ...]) -> MoveNetMaps:
    """Maps of `count` crops followed by their mirrors (`dipr.models.flip.with_mirrors`) → each
    crop's maps averaged with its mirror's brought back: joints swapped (`joints[k]` is joint k's
    mirror image), columns reversed, and the x components mirrored too: a regression dx → −dx,
    an offset dx → 1 − dx (cell j' + dx' mirrors to cell (w − 1 − j') + 1 − dx'). MoveNet's cells
    cover 4×4 pixels, so a reversed map needs no grid shift (`flip.grid_shift` is 0). Decode it
    with `symmetric_prior`: the published centre prior peaks at cell 32 of 64, half a cell right
    of the crop's centre, so with it a mirrored photo could pick another person centre."""
    pairs = tuple(2 * joint + axis for joint in joints for axis in (0, 1))
    own = MoveNetMaps(*(m[:count] for m in maps))
    mirror = MoveNetMaps(*(m[count:] for m in maps))
    is_dx = torch.tensor([0.0, 1.0] * len(joints), device=maps.offset.device).view(1, -1, 1, 1)

    def mean(crop: Tensor, mirrored: Tensor, channels: tuple[int, ...] | None = None) -> Tensor:
        return (crop + unmirror(mirrored, 0, channels)) / 2

    return MoveNetMaps(
        heatmaps=mean(own.heatmaps, mirror.heatmaps, joints),
        centres=mean(own.centres, mirror.centres),
        regress=mean(own.regress, mirror.regress * (1 - 2 * is_dx), pairs),
        offset=mean(own.offset, mirror.offset * (1 - 2 * is_dx) + is_dx, pairs),
    )


def symmetric_prior(model: MoveNet) -> Tensor:
    """The centre prior averaged with its mirror image (see `flip_averaged`)."""
    return (model.center_prior + model.center_prior.flip(1)) / 2


def _gather_cells(maps: Tensor, flat_index: Tensor) -> Tensor:
    """maps [N, C, h, w], flat_index [N, C] → the value of each channel at its own index, [N, C]."""
    return maps.flatten(2).gather(2, flat_index.unsqueeze(2)).squeeze(2)


def official_decode(
    model: MoveNet, outputs: MoveNetMaps, centre_prior: Tensor | None = None
) -> Decoded:
    """`centre_prior` replaces the network's own (the flip test's is mirror-symmetric)."""
    heatmaps = outputs.heatmaps
    n, k, h, w = heatmaps.shape
    prior = model.center_prior if centre_prior is None else centre_prior
    centre = outputs.centres[:, 0] * prior
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
