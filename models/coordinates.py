"""Heatmap cells → network-input pixels.

Both use index coordinates: the centre of the first pixel (or cell) is 0. A cell j of a map at
stride s covers input pixels s·j … s·j + s − 1, whose centre is s·j + (s − 1)/2 = (j + 0.5)·s − 0.5.
(Mapping j to s·j instead shifts every keypoint by 1.5 px at stride 4.) Coordinates normalised
to the crop's outer edges (MoveNet's published output) map as u·size − 0.5.

Networks trained by MMPose learned another mapping, j·s − 0.5 (see
`mmpose_heatmap_to_input_pixels`): a SimpleBaseline imported from MMPose keeps it, one trained by
`dipr train` uses the cell-centre mapping above, in training (its loss compares the deployable
head's input-pixel output with the targets) and at export alike.
"""

from torch import Tensor


def heatmap_to_input_pixels(coords: Tensor, stride: int) -> Tensor:
    """Continuous heatmap index coordinates → input pixel index coordinates."""
    return (coords + 0.5) * stride - 0.5


def normalized_to_input_pixels(coords: Tensor, size: int) -> Tensor:
    """Coordinates normalised to 0..1 between the input's outer edges → input pixel indices."""
    return coords * size - 0.5


def mmpose_heatmap_to_input_pixels(coords: Tensor, stride: int) -> Tensor:
    """MMPose's convention (IntegralRegressionLabel/RegressionLabel and MSRAHeatmap, non-UDP):
    heatmap index j ↔ label j·stride (its integral head normalises by arange(W)/W and the codec
    multiplies by the input size). Its labels live in the frame of its top-down warp, which maps
    the box centre to input_size/2 (`get_warp_matrix`: dst centre = (w·0.5, h·0.5), non-UDP),
    i.e. a frame whose edges are 0 and input_size; the pixel index in ours is therefore
    j·stride − 0.5."""
    return coords * stride - 0.5
