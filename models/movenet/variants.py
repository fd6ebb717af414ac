"""The published MoveNet variants (no torch here: the CLI lists them without loading torch)."""

from dataclasses import dataclass

STRIDE = 4  # every head is at stride 4


@dataclass(frozen=True)
class MoveNetConfig:
    """What differs between the published variants."""

    name: str
    input_size: int
    stem_channels: int
    # (expansion, output channels, repeats, first stride) per MobileNetV2 stage.
    stages: tuple[tuple[int, int, int, int], ...]
    fpn_inputs: tuple[int, int, int]  # channels of the stride-4, 8 and 16 taps

    @property
    def heatmap_size(self) -> int:
        return self.input_size // STRIDE


def _stages(width: float) -> tuple[tuple[int, int, int, int], ...]:
    def scaled(channels: int) -> int:
        # MobileNetV2's rounding: nearest multiple of 8, never more than 10% below.
        rounded = max(8, int(channels * width + 4) // 8 * 8)
        return rounded + 8 if rounded < 0.9 * channels * width else rounded

    base = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    return tuple((t, scaled(c), n, s) for t, c, n, s in base)


THUNDER = MoveNetConfig("movenet-thunder", 256, 56, _stages(1.75), (40, 56, 112))
LIGHTNING = MoveNetConfig("movenet-lightning", 192, 32, _stages(1.0), (24, 32, 64))
# The single-pose models `dipr export` and `dipr train` build as pose networks.
VARIANTS: dict[str, MoveNetConfig] = {"thunder": THUNDER, "lightning": LIGHTNING}

# MoveNet MultiPose Lightning, a person detector: the same feature extractor at width 1.5 on a
# 256×256 input (its weights' shapes say so), with six CenterNet heads and a decode that returns
# up to MULTIPOSE_MAX_PERSONS people (the graph's top-k).
MULTIPOSE = MoveNetConfig("movenet-multipose", 256, 48, _stages(1.5), (40, 48, 96))
MULTIPOSE_MAX_PERSONS = 6
