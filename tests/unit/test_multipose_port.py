"""The PyTorch port of MoveNet MultiPose (the person detector) against the original TFJS graph run
in Node (golden fixtures: tests/fixtures/golden/README_multipose.md)."""

from functools import cache

import cv2
import numpy as np
import pytest
import torch

from dipr.models.movenet.multipose import (
    MultiPoseDetector,
    MultiPoseHeads,
    MultiPoseNet,
    load_multipose,
)
from dipr.models.movenet.multipose_decode import MultiPoseDecoded, decode_multipose
from tests.helpers.paths import GOLDEN

PICTURES = ("astronaut_grace_hopper", "grace_hopper_camera", "astronaut_camera_grace_hopper")
# The maps kept in the fixtures (at their `cells`).
MAPS = ("center", "heatmap", "box_scale", "box_offset", "regress", "offset")
JOINTS = 17


@cache
def network() -> MultiPoseNet:
    return load_multipose()


@cache
def golden_input(picture: str) -> np.ndarray:
    bgr = cv2.imread(str(GOLDEN / f"multipose_{picture}_input.png"), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def golden(picture: str) -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / f"multipose_{picture}.npz", allow_pickle=False))


def run(images: np.ndarray) -> tuple[MultiPoseHeads, MultiPoseDecoded]:
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        heads = network()(pixels)
        return heads, decode_multipose(network(), heads)


@cache
def run_case(picture: str) -> tuple[MultiPoseHeads, MultiPoseDecoded]:
    return run(golden_input(picture)[None])


def ported_map(picture: str, name: str) -> np.ndarray:
    """The port's map, channels last and flattened to [cells, channels] like the fixtures."""
    heads, decoded = run_case(picture)
    maps = {
        "center": decoded.centre,  # after the sigmoid, as the graph's Sigmoid
        "heatmap": decoded.heatmaps,
        "box_scale": heads.box_scale,
        "box_offset": heads.box_offset,
        "regress": heads.regress,
        "offset": heads.offset,
    }
    chosen = maps[name]
    return chosen.permute(0, 2, 3, 1).reshape(-1, chosen.shape[1]).numpy()


@pytest.mark.parametrize("picture", PICTURES)
@pytest.mark.parametrize("name", MAPS)
def test_head_maps_match_tfjs(picture: str, name: str) -> None:
    expected = golden(picture)
    ours = ported_map(picture, name)[expected["cells"]]
    assert ours.shape == expected[name].shape
    assert np.abs(ours - expected[name]).max() <= 1e-4


@pytest.mark.parametrize("picture", PICTURES)
def test_decode_picks_the_cells_the_graph_picks(picture: str) -> None:
    """The same person centres in the same order (top-k), the same cell for every joint."""
    _, decoded = run_case(picture)
    expected = golden(picture)
    np.testing.assert_array_equal(decoded.centre_index.numpy(), expected["centre_index"])
    np.testing.assert_array_equal(decoded.keypoint_index[0].numpy(), expected["keypoint_index"])


@pytest.mark.parametrize("picture", PICTURES)
def test_identity_matches_tfjs(picture: str) -> None:
    _, decoded = run_case(picture)
    ours, expected = decoded.identity()[0].numpy(), golden(picture)["detections"][0]
    assert ours.shape == expected.shape == (6, 3 * JOINTS + 5)
    joints, expected_joints = ours[:, : 3 * JOINTS], expected[:, : 3 * JOINTS]
    difference = np.abs(joints - expected_joints).reshape(6, JOINTS, 3)
    assert difference[..., :2].max() <= 1e-3  # keypoints (y, x), normalised
    assert difference[..., 2].max() <= 1e-4  # keypoint scores
    assert np.abs(ours[:, -5:-1] - expected[:, -5:-1]).max() <= 1e-3  # boxes, normalised
    assert np.abs(ours[:, -1] - expected[:, -1]).max() <= 1e-4  # person scores


@pytest.mark.parametrize("picture", PICTURES)
def test_pictures_hold_several_people(picture: str) -> None:
    """Guards against comparing near-empty outputs: the graph finds at least two people."""
    person_scores = golden(picture)["detections"][0, :, -1]
    assert (person_scores >= 0.3).sum() >= 2


def test_batched_decode_equals_single_decodes() -> None:
    images = np.stack([golden_input(picture) for picture in PICTURES])
    heads, batched = run(images)
    for i in range(len(PICTURES)):
        single = decode_multipose(network(), MultiPoseHeads(*(t[i : i + 1] for t in heads)))
        for name, value in single._asdict().items():
            torch.testing.assert_close(getattr(batched, name)[i : i + 1], value, rtol=0, atol=0)
        # The whole network too (its convolutions may round differently by batch size).
        _, alone = run_case(PICTURES[i])
        torch.testing.assert_close(
            batched.identity()[i : i + 1], alone.identity(), atol=1e-5, rtol=0
        )


def test_ties_between_centres_go_to_the_lowest_cell() -> None:
    """A flat centre map makes every cell a local maximum of the same value: the graph's TopKV2
    then returns the first cells in order, in every image of a batch."""
    flat = torch.zeros(2, 1, 64, 64)
    heads = MultiPoseHeads(
        center_logits=flat,
        box_scale=torch.zeros(2, 2, 64, 64),
        box_offset=torch.zeros(2, 2, 64, 64),
        heatmap_logits=torch.zeros(2, JOINTS, 64, 64),
        regress=torch.zeros(2, 2 * JOINTS, 64, 64),
        offset=torch.zeros(2, 2 * JOINTS, 64, 64),
    )
    decoded = decode_multipose(network(), heads)
    np.testing.assert_array_equal(decoded.centre_index.numpy(), [[0, 1, 2, 3, 4, 5]] * 2)


def test_detector_outputs_are_the_graph_output_in_input_pixels() -> None:
    """The contract's outputs are `Identity` re-expressed: boxes x1, y1, x2, y2 as pixel edges
    (normalised × 256), keypoints (x, y) as pixel indices (normalised × 256 − 0.5)."""
    image = torch.from_numpy(golden_input(PICTURES[0])[None])
    with torch.no_grad():
        outputs = MultiPoseDetector(network())(image)
    _, decoded = run_case(PICTURES[0])
    ymin, xmin, ymax, xmax = decoded.boxes.unbind(-1)
    boxes = torch.stack((xmin, ymin, xmax, ymax), dim=-1) * 256
    torch.testing.assert_close(outputs.boxes, boxes)
    torch.testing.assert_close(outputs.keypoints, decoded.keypoints.flip(-1) * 256 - 0.5)
    torch.testing.assert_close(outputs.box_scores, decoded.person_scores)
    torch.testing.assert_close(outputs.keypoint_scores, decoded.keypoint_scores)
