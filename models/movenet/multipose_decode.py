"""MoveNet MultiPose's decode, re-implemented in PyTorch from its published graph (batched,
ONNX-exportable: every step is per image, the top-k and arg-maxes included).

The graph's tail after the six heads, step by step (h = w = 64 cells for a 256×256 input):

1. Person centres: the sigmoid centre map, kept only where it equals its 5×5 max-pool (|c − max|
   < 1e-6, the pool cut at the border), then the 6 highest cells, best first (ties: lowest flat
   index first, as TF's TopKV2 and ONNX's TopK order them).
2. Boxes: at each centre cell (y, x), centre = (y, x) + box offset, size = max(box scale, 0);
   edges centre ∓ size / 2, clipped to [0, h] and [0, w] cells, then × 4 / 256 and clipped to
   [0, 1]: (ymin, xmin, ymax, xmax) normalised to the input's edges.
3. Joints: regressed from the centre cell (centre + regression), then refined on the sigmoid
   keypoint heatmap: the arg-max over all cells of heatmap · exp(−d² / (min(h, w) · 0.3)), d the
   distance (in cells) to the regressed joint, counting only the cells inside the person's box
   (row j, column i with ymin ≤ j < ymax and xmin ≤ i < xmax, the clipped box in cells; the
   first cell on ties). The joint is that cell + its offset head, × 4 / 256 (normalised, no
   half-cell shift, like the single-pose output).
4. Keypoint score: the maximum over the 6 candidates of that weighted, masked heatmap at the
   chosen cell (the candidate's own weight is ≤ 1, so usually its own value).
5. Person score: centre score × keypoint score averaged over the joints scoring > 0.127
   (0 where none does).

`MultiPoseDecoded.identity()` lays these out as the graph's output `Identity`: per person 17 ×
(y, x, score), then ymin, xmin, ymax, xmax, score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dipr.models.movenet.variants import MULTIPOSE_MAX_PERSONS, STRIDE

if TYPE_CHECKING:
    from dipr.models.movenet.multipose import MultiPoseHeads, MultiPoseNet

PEAK_WINDOW = 5  # side of the graph's MaxPool that finds local maxima of the centre map


class MultiPoseDecoded(NamedTuple):
    """The decode's results and the maps it read, fp32. Pairs are (y, x), as in the graph."""

    centre: Tensor  # [N, 1, h, w] sigmoid person-centre map
    heatmaps: Tensor  # [N, K, h, w] sigmoid keypoint heatmaps
    centre_index: Tensor  # [N, P] int64 flat cell index (y·w + x) of each person's centre
    centre_scores: Tensor  # [N, P] the centre map there
    boxes: Tensor  # [N, P, 4] ymin, xmin, ymax, xmax normalised to the input's edges, in [0, 1]
    keypoint_index: Tensor  # [N, P, K] int64 flat cell index each joint was refined to
    keypoints: Tensor  # [N, P, K, 2] (y, x) normalised: (cell + offset) · stride / input size
    keypoint_scores: Tensor  # [N, P, K]
    person_scores: Tensor  # [N, P]

    def identity(self) -> Tensor:
        """[N, P, 3K + 5]: the graph's `Identity` output."""
        n, persons = self.person_scores.shape
        joints = torch.cat((self.keypoints, self.keypoint_scores.unsqueeze(-1)), dim=-1)
        return torch.cat(
            (joints.reshape(n, persons, -1), self.boxes, self.person_scores.unsqueeze(-1)), dim=-1
        )


def _top_k_lowest_index_first(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest of each row of [N, M], best first, equal values by ascending index.

    Ties do happen here (every cell that is not a local maximum is 0, and a picture with fewer
    than k maxima fills the top k with them), and TF's TopKV2 orders them by index. torch.topk
    leaves their order unspecified, and a stable sort does not export to ONNX; k arg-maxes
    (each the first maximum, in PyTorch and ONNX alike) give TF's order exactly, at no cost
    worth counting for k = 6."""
    remaining = values
    picked_values, picked_index = [], []
    for _ in range(k):
        index = remaining.argmax(dim=1, keepdim=True)
        picked_index.append(index)
        picked_values.append(values.gather(1, index))
        remaining = remaining.scatter(1, index, float("-inf"))
    return torch.cat(picked_values, dim=1), torch.cat(picked_index, dim=1)


def _at_cells(maps: Tensor, index: Tensor) -> Tensor:
    """maps [N, C, h, w], index [N, P] flat cells → the C values at each cell, [N, P, C]."""
    n, channels = maps.shape[:2]
    cells = index.unsqueeze(1).expand(n, channels, index.shape[1])
    return maps.flatten(2).gather(2, cells).transpose(1, 2)


def _split_cells(index: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Flat cell index → (row, column), as float32 (exact: indices are < 2^24)."""
    row = torch.div(index, width, rounding_mode="floor")
    return row.float(), (index - row * width).float()


def decode_multipose(network: MultiPoseNet, heads: MultiPoseHeads) -> MultiPoseDecoded:
    """The published graph's decode of the six heads (fp32), batched."""
    centre = torch.sigmoid(heads.center_logits)
    heatmaps = torch.sigmoid(heads.heatmap_logits)
    n, joints, h, w = heatmaps.shape
    persons = MULTIPOSE_MAX_PERSONS
    # TF's MaxPool "SAME" ignores the padding, as max_pool2d's implicit −inf padding does.
    pooled = F.max_pool2d(centre, PEAK_WINDOW, stride=1, padding=PEAK_WINDOW // 2)
    is_peak = (centre - pooled).abs() < network.peak_tolerance.float()
    centre_scores, centre_index = _top_k_lowest_index_first(
        (centre * is_peak.float()).flatten(1), persons
    )
    centre_y, centre_x = _split_cells(centre_index, w)

    # Boxes, in cells. The graph clips with min(·, size) then max(·, 0); so does this.
    size = _at_cells(heads.box_scale, centre_index).clamp_min(0.0)
    box_offset = _at_cells(heads.box_offset, centre_index)
    box_y = centre_y + box_offset[..., 0]
    box_x = centre_x + box_offset[..., 1]
    half_h, half_w = size[..., 0] * 0.5, size[..., 1] * 0.5
    limits = (float(h), float(w), float(h), float(w))
    edges = (box_y - half_h, box_x - half_w, box_y + half_h, box_x + half_w)
    ymin, xmin, ymax, xmax = (
        torch.clamp_min(torch.clamp_max(edge, limit), 0.0)
        for edge, limit in zip(edges, limits, strict=True)
    )
    input_h, input_w = h * STRIDE, w * STRIDE
    device = heatmaps.device
    scale = torch.tensor([input_h, input_w, input_h, input_w], dtype=torch.float32, device=device)
    boxes = torch.clamp(torch.stack((ymin, xmin, ymax, xmax), dim=-1) * STRIDE / scale, 0.0, 1.0)

    # Joints: regressed from the centre, refined on the heatmaps around the regressed position.
    regress = _at_cells(heads.regress, centre_index).reshape(n, persons, joints, 2)
    joint_y = (centre_y.unsqueeze(-1) + regress[..., 0])[..., None, None]  # [N, P, K, 1, 1]
    joint_x = (centre_x.unsqueeze(-1) + regress[..., 1])[..., None, None]
    grid_y = torch.arange(h, dtype=torch.float32, device=device).view(h, 1)
    grid_x = torch.arange(w, dtype=torch.float32, device=device).view(1, w)
    squared = (grid_y - joint_y) ** 2 + (grid_x - joint_x) ** 2  # [N, P, K, h, w]
    weight = torch.exp(-squared / (min(h, w) * network.joint_distance_scale.float()))
    inside_y = (grid_y >= ymin[..., None, None, None]) & (grid_y < ymax[..., None, None, None])
    inside_x = (grid_x >= xmin[..., None, None, None]) & (grid_x < xmax[..., None, None, None])
    weighted = heatmaps.unsqueeze(1) * weight * (inside_y & inside_x).float()  # [N, P, K, h, w]
    keypoint_index = weighted.flatten(3).argmax(dim=3)  # [N, P, K], first maximum on ties
    best = weighted.amax(dim=1).flatten(2)  # [N, K, h·w]: over candidates, as the graph does
    keypoint_scores = best.gather(2, keypoint_index.transpose(1, 2)).transpose(1, 2)
    cell_y, cell_x = _split_cells(keypoint_index, w)
    offsets = heads.offset.reshape(n, joints, 2, h * w)
    per_joint = keypoint_index.transpose(1, 2).unsqueeze(2).expand(n, joints, 2, persons)
    offset = offsets.gather(3, per_joint).permute(0, 3, 1, 2)  # [N, P, K, 2]
    per_cell = torch.tensor([STRIDE / input_h, STRIDE / input_w], device=device)
    keypoints = (torch.stack((cell_y, cell_x), dim=-1) + offset) * per_cell

    # Person score: the mean, over joints scoring above the threshold, of centre × joint score.
    confident = keypoint_scores > network.keypoint_score_threshold.float()
    count = confident.float().sum(-1).clamp_min(1.0)
    total = (centre_scores.unsqueeze(-1) * torch.where(confident, keypoint_scores, 0.0)).sum(-1)
    person_scores = count.reciprocal() * total  # the graph multiplies by the reciprocal
    return MultiPoseDecoded(
        centre=centre,
        heatmaps=heatmaps,
        centre_index=centre_index,
        centre_scores=centre_scores,
        boxes=boxes,
        keypoint_index=keypoint_index,
        keypoints=keypoints,
        keypoint_scores=keypoint_scores,
        person_scores=person_scores,
    )
