"""The deployable MoveNet: heatmap cells → input pixels, and the head on real photos."""

from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dipr.export.cli import DEFAULT_PARITY_IMAGES
from dipr.export.onnx_export import ExportOptions, build_pose_model, load_parity_images
from dipr.models.coordinates import heatmap_to_input_pixels, normalized_to_input_pixels
from dipr.models.movenet.pose import MoveNetPose, PoseOutputs
from dipr.models.movenet.weights import load_movenet


def test_cell_maps_to_the_centre_of_the_pixels_it_covers() -> None:
    cells = torch.tensor([0.0, 1.0, 63.0])
    assert heatmap_to_input_pixels(cells, 4).tolist() == [1.5, 5.5, 253.5]
    # The crop's outer edges (normalised 0 and 1) lie half a pixel outside the first/last centre.
    assert normalized_to_input_pixels(torch.tensor([0.0, 1.0]), 256).tolist() == [-0.5, 255.5]


def test_mapping_is_exact_for_a_stride_4_reduction() -> None:
    """Average pooling by 4 keeps a symmetric blob's centroid under (j + 0.5)·4 − 0.5 (4·j would
    be 1.5 px off)."""
    ys, xs = torch.meshgrid(
        torch.arange(256.0, dtype=torch.float64),
        torch.arange(256.0, dtype=torch.float64),
        indexing="ij",
    )
    for x0, y0 in [(100.3, 57.8), (31.0, 201.6), (128.9, 128.1)]:
        blob = torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * 6.0**2))
        pooled = F.avg_pool2d(blob[None, None], 4)[0, 0]
        grid_y, grid_x = torch.meshgrid(
            torch.arange(64.0, dtype=torch.float64),
            torch.arange(64.0, dtype=torch.float64),
            indexing="ij",
        )
        cell = torch.stack([(pooled * grid_x).sum(), (pooled * grid_y).sum()]) / pooled.sum()
        assert torch.allclose(
            heatmap_to_input_pixels(cell, 4), torch.tensor([x0, y0]).double(), atol=1e-3
        )


@cache
def outputs(beta: float, region: str) -> PoseOutputs:
    pose, _ = build_pose_model(ExportOptions(beta=beta, region=region))  # type: ignore[arg-type]
    images = torch.from_numpy(load_parity_images(DEFAULT_PARITY_IMAGES, 256, 9))
    with torch.no_grad():
        return pose(images)


def test_keypoints_sit_on_the_official_decode_without_offset() -> None:
    """On real photos our keypoints and MoveNet's own (cell + offset head) agree on average:
    a wrong cell → pixel mapping would show up as a 1.5 px shift."""
    out = outputs(10.0, "person")
    confident = out.scores > 0.3
    assert confident.sum() > 30
    shift = (out.keypoints - out.keypoints_official)[confident].mean(dim=0)
    assert shift.abs().max() < 0.25
    assert (out.keypoints - out.keypoints_official)[confident].abs().mean() < 1.5


def test_global_region_debiasing_removes_the_pull_to_the_centre() -> None:
    out = outputs(10.0, "global")
    confident = out.scores > 0.3
    raw_error = (out.keypoints_raw - out.keypoints_official)[confident].norm(dim=1).mean()
    debiased_error = (out.keypoints - out.keypoints_official)[confident].norm(dim=1).mean()
    assert raw_error > 10.0  # the background drags the raw soft-argmax toward the crop centre
    assert debiased_error < 0.2 * raw_error


def test_outputs_are_bounded() -> None:
    out = outputs(10.0, "person")
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert ((out.keypoints >= -0.5) & (out.keypoints <= 255.5)).all()
    assert np.isfinite(out.keypoints_raw.numpy()).all()


def test_rejects_bad_settings() -> None:
    network = load_movenet("lightning")
    with pytest.raises(ValueError, match="region"):
        MoveNetPose(network, beta=10.0, region="everywhere")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beta"):
        MoveNetPose(network, beta=0.0)
