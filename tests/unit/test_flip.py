"""The flip test: a mirrored crop's maps come back to the crop's frame (columns reversed, left and
right swapped, on the same pixel grid), so a mirrored photo gives mirrored keypoints."""

from functools import cache

import pytest
import torch

from dipr.core.keypoints import COCO_KEYPOINTS, flip_permutation
from dipr.export.cli import DEFAULT_PARITY_IMAGES
from dipr.export.onnx_export import ExportOptions, build_pose_model, load_parity_images
from dipr.models.coordinates import heatmap_to_input_pixels, mmpose_heatmap_to_input_pixels
from dipr.models.flip import grid_shift, unmirror, with_mirrors
from dipr.models.movenet.pose import PoseOutputs

KEYPOINT_OUTPUTS = ("keypoints", "keypoints_raw", "keypoints_official")


def test_cell_centre_maps_line_up_with_their_mirror_and_mmpose_maps_one_cell_off() -> None:
    assert grid_shift(64, 256, lambda c: heatmap_to_input_pixels(c, 4)) == 0
    assert grid_shift(48, 192, lambda c: mmpose_heatmap_to_input_pixels(c, 4)) == 1
    with pytest.raises(ValueError, match="does not line up"):
        grid_shift(64, 256, lambda c: c * 4 + 1.0)  # a half-cell offset


def test_a_mirrored_peak_comes_back_to_the_cell_over_the_same_pixel() -> None:
    """MMPose's cell j lies over pixel 4j − 0.5: the mirror's cell 10 (pixel 39.5) lies over the
    crop's pixel 255 − 39.5 = 215.5 = 4·54 − 0.5, cell 54 (plain reversal would say 53)."""
    mirrored = torch.zeros(1, 1, 4, 64)
    mirrored[0, 0, 2, 10] = 1.0
    back = unmirror(mirrored, grid_shift(64, 256, lambda c: mmpose_heatmap_to_input_pixels(c, 4)))
    assert back[0, 0, 2].argmax() == 54
    assert unmirror(mirrored, 0)[0, 0, 2].argmax() == 53


def test_channels_swap_left_and_right() -> None:
    maps = torch.arange(17.0).view(1, 17, 1, 1).expand(1, 17, 2, 2)
    back = unmirror(maps, 0, flip_permutation())
    left_eye, right_eye = COCO_KEYPOINTS.index("left_eye"), COCO_KEYPOINTS.index("right_eye")
    assert back[0, left_eye, 0, 0] == right_eye and back[0, right_eye, 0, 0] == left_eye
    assert back[0, 0, 0, 0] == 0  # the nose is its own mirror image


def test_mirrors_follow_the_crops_in_one_batch() -> None:
    pixels = torch.arange(2 * 3 * 2 * 4.0).view(2, 3, 2, 4)
    both = with_mirrors(pixels)
    assert torch.equal(both[:2], pixels) and torch.equal(both[2:], pixels.flip(3))


@cache
def photo_and_mirror_outputs(flip_test: bool) -> tuple[PoseOutputs, PoseOutputs]:
    pose, _ = build_pose_model(ExportOptions(flip_test=flip_test))
    images = torch.from_numpy(load_parity_images(DEFAULT_PARITY_IMAGES, 256, 3))
    with torch.no_grad():
        return pose(images), pose(images.flip(2).contiguous())


def mirrored(keypoints: torch.Tensor, width: int = 256) -> torch.Tensor:
    """Keypoints [N, K, 2] of a mirrored crop, in the crop's frame: x → width − 1 − x, joints
    swapped."""
    back = keypoints[:, list(flip_permutation())].clone()
    back[..., 0] = width - 1 - back[..., 0]
    return back


@pytest.mark.parametrize("output", KEYPOINT_OUTPUTS)
def test_with_the_flip_test_a_mirrored_photo_gives_mirrored_keypoints(output: str) -> None:
    photo, mirror = photo_and_mirror_outputs(flip_test=True)
    difference = (getattr(photo, output) - mirrored(getattr(mirror, output))).abs().max()
    assert difference < 1e-3
    assert torch.equal(photo.scores, mirror.scores[:, list(flip_permutation())])


def test_without_the_flip_test_the_same_check_fails() -> None:
    """What the test above pins is the flip test's doing: MoveNet alone is not mirror-symmetric
    (its centre prior peaks half a cell right of the middle, and convolutions are not either)."""
    photo, mirror = photo_and_mirror_outputs(flip_test=False)
    assert (photo.keypoints - mirrored(mirror.keypoints)).abs().max() > 1.0


@pytest.mark.parametrize(("coordinates", "shift"), [("dipr", 0), ("mmpose", 1)])
def test_simplebaseline_flip_test_shifts_by_its_coordinates(coordinates: str, shift: int) -> None:
    from dipr.models.simplebaseline.network import SimpleBaseline
    from dipr.models.simplebaseline.pose import SimpleBaselinePose

    torch.manual_seed(0)
    network = SimpleBaseline(18).eval()
    for parameter in network.head.parameters():  # its final layer starts at zero: flat maps
        torch.nn.init.normal_(parameter, std=0.05)
    flipped = SimpleBaselinePose(
        network,
        (192, 256),
        10.0,
        coordinates=coordinates,
        flip_test=True,  # type: ignore[arg-type]
    )
    plain = SimpleBaselinePose(network, (192, 256), 10.0, coordinates=coordinates)  # type: ignore[arg-type]
    assert flipped.flip_shift == shift
    images = torch.from_numpy(load_parity_images(DEFAULT_PARITY_IMAGES, (192, 256), 2))
    with torch.no_grad():
        both, alone = flipped(images), plain(images)
    assert both.keypoints.shape == alone.keypoints.shape == (2, 17, 2)
    assert not torch.allclose(both.keypoints, alone.keypoints)  # the mirrors took part
