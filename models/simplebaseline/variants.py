"""SimpleBaseline architectures, head modes and MMPose configurations (no torch here: the CLIs
list them without loading torch).

Sizes are (width, height), as `--input-size WxH` takes them. MMPose names its configs height ×
width: its "256x192" is (192, 256) here, its "384x288" is (288, 384).
"""

import argparse
import re
from dataclasses import dataclass
from typing import Literal

DEPTHS: tuple[int, ...] = (18, 34, 50, 101, 152)
ARCH_PREFIX = "simplebaseline-res"
ARCHS: tuple[str, ...] = tuple(f"{ARCH_PREFIX}{depth}" for depth in DEPTHS)
# The paper's and MMPose's input sizes; any multiple of 32 on both sides works.
STANDARD_INPUT_SIZES: tuple[tuple[int, int], ...] = ((192, 256), (256, 256), (288, 384))
STRIDE = 4  # ResNet's stride 32, then three ×2 deconvolutions
SIZE_MULTIPLE = 32

# What `keypoints` carries (export metadata `debias_mode`):
# - "paper": the closed form of Gu et al. (supplement Eq. 10) over the whole map, with β in C and
#   |Ω| = H·W (`dipr.models.debias.integral_estimate`);
# - "mmpose": MMPose's `debias=True` formula, exactly as its IntegralRegressionHead computes it
#   (C = Σ exp(H) without β, |Ω| taken as 1, centre 1/2 in its normalised coordinates);
# - "none": the plain soft-argmax (what MMPose's ipr/dsnt configs output).
DebiasMode = Literal["paper", "mmpose", "none"]
DEBIAS_MODES: tuple[DebiasMode, ...] = ("paper", "mmpose", "none")

# How a heatmap index j becomes an input-pixel index (pixel centres at integers):
# - "dipr": j is the centre of the 4×4 input block it covers: (j + 0.5)·4 − 0.5
#   (`dipr.models.coordinates.heatmap_to_input_pixels`), for networks trained by `dipr train`;
# - "mmpose": MMPose's label is j·4 in its crop frame, whose edges sit at 0 and input_size (its
#   warp maps the box centre to input_size/2), so the index is j·4 − 0.5
#   (`dipr.models.coordinates.mmpose_heatmap_to_input_pixels`).
Coordinates = Literal["dipr", "mmpose"]
COORDINATES: tuple[Coordinates, ...] = ("dipr", "mmpose")

HeadKind = Literal["integral", "heatmap"]
# β for heatmap-trained checkpoints (MSE to Gaussians, background 0), which were never trained
# with a softmax: at β=10 the paper's correction is near exact on Gaussian maps (REFERENCE §1).
HEATMAP_BETA = 10.0


def arch_depth(arch: str) -> int:
    """ "simplebaseline-res50" → 50; ValueError for anything else."""
    if not arch.startswith(ARCH_PREFIX) or not arch[len(ARCH_PREFIX) :].isdigit():
        raise ValueError(f"not a SimpleBaseline architecture: {arch!r}; known: {', '.join(ARCHS)}")
    depth = int(arch[len(ARCH_PREFIX) :])
    if depth not in DEPTHS:
        raise ValueError(f"unknown ResNet depth in {arch!r}; known: {', '.join(ARCHS)}")
    return depth


def parse_input_size(text: str) -> tuple[int, int]:
    """ "256x192" (width x height) → (256, 192), both positive multiples of 32."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"input size must be WIDTHxHEIGHT, e.g. 192x256, got {text!r}")
    size = (int(match.group(1)), int(match.group(2)))
    check_input_size(size)
    return size


def input_size_argument(text: str) -> tuple[int, int]:
    """`parse_input_size` as an argparse `type`: a bad size is a usage error (exit status 2)."""
    try:
        return parse_input_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def check_input_size(size: tuple[int, int]) -> None:
    if any(side <= 0 or side % SIZE_MULTIPLE for side in size):
        raise ValueError(
            f"input size {size[0]}x{size[1]}: both sides must be positive multiples of "
            f"{SIZE_MULTIPLE} (the heatmap is then exactly input/{STRIDE})"
        )


@dataclass(frozen=True)
class MMPoseConfig:
    """What an MMPose config says that its checkpoint does not hold."""

    name: str
    depth: int
    input_size: tuple[int, int]  # (width, height)
    beta: float  # the softmax temperature it was trained with (IntegralRegressionHead `beta`)
    debias: DebiasMode  # the head's formula as trained: "mmpose" (debias=True) or "none"
    head: HeadKind


# The configs of configs/body_2d_keypoint/integral_regression/coco/ (head DSNTHead, β given only
# in the debias config; DSNTHead's default β is 1.0) and the plain SimpleBaseline heatmap model.
MMPOSE_PRESETS: dict[str, MMPoseConfig] = {
    "ipr_res50": MMPoseConfig("ipr_res50", 50, (256, 256), 1.0, "none", "integral"),
    "ipr_res50_dsnt": MMPoseConfig("ipr_res50_dsnt", 50, (256, 256), 1.0, "none", "integral"),
    "ipr_res50_debias": MMPoseConfig(
        "ipr_res50_debias", 50, (256, 256), 10.0, "mmpose", "integral"
    ),
    "td-hm_res50_256x192": MMPoseConfig(
        "td-hm_res50_256x192", 50, (192, 256), HEATMAP_BETA, "none", "heatmap"
    ),
    "td-hm_res101_256x192": MMPoseConfig(
        "td-hm_res101_256x192", 101, (192, 256), HEATMAP_BETA, "none", "heatmap"
    ),
    "td-hm_res152_256x192": MMPoseConfig(
        "td-hm_res152_256x192", 152, (192, 256), HEATMAP_BETA, "none", "heatmap"
    ),
}


def parse_mmpose_config(text: str, name: str = "config") -> MMPoseConfig:
    """The few values that matter, read from an MMPose config file's text (or the `cfg` text
    that MMEngine stores in a checkpoint's `meta`). Regular expressions, not exec: a config is
    Python, and running a downloaded one is not needed to read four numbers."""
    head_type = re.search(r"head\s*=\s*dict\(\s*type\s*=\s*['\"](\w+)['\"]", text)
    kind: HeadKind = (
        "integral"
        if head_type and head_type.group(1) in ("DSNTHead", "IntegralRegressionHead")
        else "heatmap"
    )
    depth = re.search(r"depth\s*=\s*(\d+)", text)
    size = re.search(r"input_size\s*=\s*[\(\[]\s*(\d+)\s*,\s*(\d+)\s*[\)\]]", text)
    beta = re.search(r"beta\s*=\s*([0-9.eE+-]+)", text)
    debias = re.search(r"debias\s*=\s*(True|False)", text)
    if not depth or not size:
        raise ValueError(f"{name}: cannot find the backbone depth and codec input_size")
    # DSNTHead's default β is 1.0; heatmap heads were never trained through a softmax.
    integral_beta = float(beta.group(1)) if beta else 1.0
    beta_value = integral_beta if kind == "integral" else HEATMAP_BETA
    return MMPoseConfig(
        name=name,
        depth=int(depth.group(1)),
        input_size=(int(size.group(1)), int(size.group(2))),
        beta=beta_value,
        debias="mmpose" if kind == "integral" and debias and debias.group(1) == "True" else "none",
        head=kind,
    )
