"""The regions Ω a deployable network can debias over (names shared with the ONNX metadata)."""

from typing import Literal

Region = Literal["global", "window", "person"]
REGIONS: tuple[Region, ...] = ("global", "window", "person")
