"""Flip test: every crop also runs mirrored, and the mirror's maps come back to the crop's frame
before any decode, so that the head debiases the average of both.

Bringing a map back means reversing its columns, swapping left and right channels, and aligning it
to the crop's own pixel grid: a mirrored crop's map cell j' lies over input pixel p(j') of the
mirror, i.e. over pixel (width − 1) − p(j') of the crop, which is the crop's cell c − j' for a
constant c. Reversing the columns alone puts it at (w − 1) − j', so the reversed map sits
c − (w − 1) cells off: 0 for maps whose cell j covers pixels s·j … s·j + s − 1 (cell centres,
MoveNet and `dipr train`), 1 for MMPose's j·s − 0.5 (the shift of Xiao et al.'s flip test).
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def with_mirrors(pixels: Tensor) -> Tensor:
    """NCHW crops [N, …] → [2N, …]: the crops, then each one mirrored (columns reversed)."""
    return torch.cat((pixels, pixels.flip(3)))


def grid_shift(
    map_width: int, input_width: int, to_input_pixels: Callable[[Tensor], Tensor]
) -> int:
    """Cells by which a mirrored crop's reversed map is off the crop's grid (see the module
    docstring); ValueError when the two grids do not line up at a whole cell."""
    cells = torch.tensor([0.0, 1.0], dtype=torch.float64)
    first, second = (float(p) for p in to_input_pixels(cells))
    stride = second - first
    mirrored_axis = (input_width - 1 - 2 * first) / stride  # the constant c
    shift = mirrored_axis - (map_width - 1)
    if abs(shift - round(shift)) > 1e-9:
        raise ValueError(
            f"a mirrored map of {map_width} cells does not line up with the crop's "
            f"{input_width} pixels (off by {shift:g} cells)"
        )
    return round(shift)


def unmirror(maps: Tensor, shift: int, channels: Sequence[int] | None = None) -> Tensor:
    """Maps [N, C, h, w] computed on mirrored crops, in the crops' own frame: columns reversed,
    moved `shift` cells right (the uncovered edge columns repeat the nearest one), and channel i
    taken from channels[i] (left ↔ right) when given."""
    back = maps.flip(3)
    if channels is not None:
        back = back[:, list(channels)]
    if shift > 0:
        edge = back[..., :1].expand(*back.shape[:-1], shift)
        back = torch.cat((edge, back[..., :-shift]), dim=3)
    elif shift < 0:
        edge = back[..., -1:].expand(*back.shape[:-1], -shift)
        back = torch.cat((back[..., -shift:], edge), dim=3)
    return back


def average_with_mirrors(
    maps: Tensor, count: int, shift: int, channels: Sequence[int] | None = None
) -> Tensor:
    """[2·count, C, h, w] maps of `with_mirrors` crops → [count, C, h, w]: each crop's maps
    averaged with its mirror's, brought back."""
    return (maps[:count] + unmirror(maps[count:], shift, channels)) / 2
