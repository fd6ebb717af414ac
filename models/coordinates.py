"""Heatmap cells ↔ network-input pixels.

Both use index coordinates: the centre of the first pixel (or cell) is 0. A cell j of a map at
stride s covers input pixels s·j … s·j + s − 1, whose centre is s·j + (s − 1)/2 = (j + 0.5)·s − 0.5.
(Mapping j to s·j instead shifts every keypoint by 1.5 px at stride 4.) Coordinates normalised
to the crop's outer edges (MoveNet's published output) map as u·size − 0.5.
"""

from torch import Tensor


def heatmap_to_input_pixels(coords: Tensor, stride: int) -> Tensor:
    """Continuous heatmap index coordinates → input pixel index coordinates."""
    return (coords + 0.5) * stride - 0.5


def normalized_to_input_pixels(coords: Tensor, size: int) -> Tensor:
    """Coordinates normalised to 0..1 between the input's outer edges → input pixel indices."""
    return coords * size - 0.5
