"""Every network `dipr export` and `dipr train` know, one record each: the one place that knows
an architecture.

A record says what the network is (its role, family, input size, embedded weights), which options
apply to it, its defaults, and how to build it. There are two roles:

- pose models (`Architecture`, role "pose"): `dipr export` writes them to the pose contract
  (`dipr.core.pose_contract`) and `dipr train` trains them;
- person detectors (`DetectorArchitecture`, role "person_detector"): `dipr export` writes them to
  the detector contract (`dipr.core.detector_contract`); nothing trains them, and the pose
  options (β, region, window, debias, input size, MMPose config) do not apply.

`architecture` and NAMES know pose models only (what `dipr train` offers); `export_architecture`
and EXPORT_NAMES know both (what `dipr export` offers).

Nothing here imports torch, safetensors or onnx, so that the CLIs list the architectures for
`--help` without loading them: the builders live in each family's `build` module, which a record
imports only when asked to build (as torchvision's weights enums carry their transforms).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from dipr.models.movenet.variants import MULTIPOSE, MULTIPOSE_MAX_PERSONS, VARIANTS
from dipr.models.regions import REGIONS, Region
from dipr.models.simplebaseline.variants import (
    ARCH_PREFIX,
    DEBIAS_MODES,
    DEPTHS,
    Coordinates,
    DebiasMode,
)

if TYPE_CHECKING:
    from torch import nn

    from dipr.models.movenet.multipose import MultiPoseDetector
    from dipr.models.movenet.pose import MoveNetPose
    from dipr.models.simplebaseline.pose import SimpleBaselinePose

Family = Literal["movenet", "simplebaseline"]
Role = Literal["pose", "person_detector"]

MODELS_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = MODELS_DIR / "weights"
ONNX_DIR = MODELS_DIR / "onnx"
DEFAULT_EXPORT_ARCH = "movenet-thunder"  # what `dipr export` writes and `dipr serve` serves
DEFAULT_DETECTOR_ARCH = MULTIPOSE.name  # the person detector `dipr export --arch` can write
DEFAULT_TRAINING_ARCH = "simplebaseline-res50"
DEFAULT_WINDOW = 7  # side of the k×k window of the "window" and "person" regions


@dataclass(frozen=True)
class ExportRequest:
    """What an export builder is asked for, the record's defaults already filled in."""

    source: Path  # the embedded weights, `--weights` or `--checkpoint`
    beta: float | None  # None: the record's export β, else the one the checkpoint was trained with
    region: Region
    window: int | None  # None for the "global" region
    input_size: tuple[int, int] | None  # (width, height); None: fixed, or the checkpoint's
    debias: DebiasMode
    mmpose_config: str | None  # preset name or MMPose config file
    fp16: bool
    flip_test: bool = False  # each crop also runs mirrored, the maps averaged before the head


@dataclass(frozen=True)
class BuiltPose:
    """A deployable network (eval mode) and what the ONNX metadata says about it."""

    pose: MoveNetPose | SimpleBaselinePose
    input_size: tuple[int, int]  # (width, height)
    beta: float
    coordinates: Coordinates
    trained_debias: str  # the head it was trained with ("paper", "mmpose", "none"); "" unknown
    score_meaning: str


@dataclass(frozen=True)
class TrainingRequest:
    """What a training builder is asked for (from `dipr train`'s configuration)."""

    pretrained: Path | None  # None: the embedded weights, or none at all
    input_size: tuple[int, int]  # (width, height)
    beta: float
    region: Region
    window: int | None


@dataclass(frozen=True)
class Architecture:
    """One pose network `dipr export` and `dipr train` can build, and what applies to it."""

    role: ClassVar[Role] = "pose"
    name: str  # the `--arch` value and the ONNX metadata `name`
    family: Family
    variant: str  # the family's own name for it: MoveNet's "thunder", SimpleBaseline's "res50"
    input_size: tuple[int, int] | None  # (width, height) when fixed; None: chosen per model
    weights: Path | None  # the embedded weights; None: a checkpoint is required
    regions: tuple[Region, ...]  # the regions Ω its head can debias over
    default_region: Region
    debias_modes: tuple[DebiasMode, ...]  # the heads it can be exported with, default first
    takes_mmpose_config: bool  # reads MMPose checkpoints, whose config holds β and input size
    export_beta: float | None  # None: the β the checkpoint was trained with
    train_beta: float
    train_lr: float  # Adam's learning rate
    train_input_size: tuple[int, int]  # (width, height) unless `--input-size` says otherwise
    builders: str  # the module with build_for_export and build_for_training (imports torch)

    @property
    def takes_window(self) -> bool:
        return any(region != "global" for region in self.regions)

    @property
    def takes_weights(self) -> bool:
        """`--weights` replaces embedded weights; without any, the file is a `--checkpoint`."""
        return self.weights is not None

    @property
    def default_onnx(self) -> Path:
        """Where `dipr export` writes it unless told otherwise."""
        return ONNX_DIR / f"{self.name}.onnx"

    def check_options(
        self,
        *,
        region: Region | None = None,
        window: int | None = None,
        input_size: tuple[int, int] | None = None,
        debias: DebiasMode | None = None,
        weights: Path | None = None,
        checkpoint: Path | None = None,
        mmpose_config: str | None = None,
    ) -> None:
        """ValueError naming the first option given (not None) that does not apply here."""
        if region is not None and region not in self.regions:
            raise ValueError(
                f"{self.name}'s head supports --region {_either(self.regions)} only: drop --region"
            )
        if window is not None and not self.takes_window:
            raise ValueError(f"{self.name} debiases over the whole map: drop --window")
        if debias is not None and debias not in self.debias_modes:
            raise ValueError(
                f"{self.name}'s head supports --debias {_either(self.debias_modes)} only"
            )
        if input_size is not None and self.input_size is not None:
            width, height = self.input_size
            raise ValueError(
                f"{self.name}'s input size is fixed at {width}x{height}: drop --input-size"
            )
        if mmpose_config is not None and not self.takes_mmpose_config:
            raise ValueError(f"{self.name} has no MMPose checkpoints: drop --mmpose-config")
        if weights is not None and not self.takes_weights:
            raise ValueError(
                f"{self.name} has no embedded weights to replace: pass its file as --checkpoint"
            )
        if weights is not None and checkpoint is not None:
            raise ValueError(f"give {self.name} --weights or --checkpoint, not both")

    def build_for_export(self, request: ExportRequest) -> BuiltPose:
        return importlib.import_module(self.builders).build_for_export(self, request)

    def build_for_training(self, request: TrainingRequest) -> tuple[nn.Module, nn.Module]:
        """(the deployable pose module trained through, the network whose weights are saved)."""
        return importlib.import_module(self.builders).build_for_training(self, request)


@dataclass(frozen=True)
class DetectorExportRequest:
    """What a detector's export builder is asked for."""

    source: Path  # the embedded weights or `--weights`
    fp16: bool


@dataclass(frozen=True)
class BuiltDetector:
    """A deployable person detector (eval mode) and what the ONNX metadata says about it."""

    detector: MultiPoseDetector
    input_size: tuple[int, int]  # (width, height)
    max_persons: int


@dataclass(frozen=True)
class DetectorArchitecture:
    """One person detector `dipr export` can build. Not a pose model: `dipr train` does not offer
    it, and `dipr export` refuses the pose options for it."""

    role: ClassVar[Role] = "person_detector"
    name: str  # the `--arch` value and the ONNX metadata `name`
    family: Family
    input_size: tuple[int, int]  # (width, height), fixed
    weights: Path  # the embedded weights (`--weights` replaces them)
    max_persons: int  # candidates per image (the contract's P)
    builders: str  # the module with build_detector_for_export (imports torch)

    @property
    def default_onnx(self) -> Path:
        """Where `dipr export` writes it unless told otherwise."""
        return ONNX_DIR / f"{self.name}.onnx"

    def check_options(
        self,
        *,
        beta: float | None = None,
        region: Region | None = None,
        window: int | None = None,
        input_size: tuple[int, int] | None = None,
        debias: DebiasMode | None = None,
        mmpose_config: str | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        """ValueError naming every pose-only option given (not None): none applies to a
        detector; and a `--checkpoint`, since nothing trains one."""
        pose_only = {
            "--beta": beta,
            "--region": region,
            "--window": window,
            "--input-size": input_size,
            "--debias": debias,
            "--mmpose-config": mmpose_config,
        }
        given = [flag for flag, value in pose_only.items() if value is not None]
        if given:
            several = len(given) > 1
            raise ValueError(
                f"{self.name} is a person detector, not a pose model: {', '.join(given)} "
                f"{'apply' if several else 'applies'} to pose models only; "
                f"drop {'them' if several else 'it'}"
            )
        if checkpoint is not None:
            raise ValueError(
                f"{self.name} is a person detector and has no training checkpoints "
                "(`dipr train` trains pose models): pass other weights as --weights"
            )

    def build_for_export(self, request: DetectorExportRequest) -> BuiltDetector:
        return importlib.import_module(self.builders).build_detector_for_export(self, request)


def _either(values: tuple[str, ...]) -> str:
    return " or ".join(values)


def _movenet(variant: str) -> Architecture:
    config = VARIANTS[variant]
    size = (config.input_size, config.input_size)
    return Architecture(
        name=config.name,
        family="movenet",
        variant=variant,
        input_size=size,
        weights=WEIGHTS_DIR / f"{config.name}.safetensors",
        regions=REGIONS,
        default_region="person",
        debias_modes=("paper",),  # its head is the deployable one, trained or not
        takes_mmpose_config=False,
        export_beta=5.0,
        train_beta=5.0,
        train_lr=1e-4,  # fine-tuning an already trained network
        train_input_size=size,
        builders="dipr.models.movenet.build",
    )


def _simplebaseline(depth: int) -> Architecture:
    return Architecture(
        name=f"{ARCH_PREFIX}{depth}",
        family="simplebaseline",
        variant=f"res{depth}",
        input_size=None,  # any multiple of 32 on both sides
        weights=None,
        regions=("global",),  # its head runs over the whole map
        default_region="global",
        debias_modes=DEBIAS_MODES,
        takes_mmpose_config=True,
        export_beta=None,
        train_beta=10.0,  # as MMPose's ipr_res50_debias
        train_lr=5e-4,  # MMPose's, from scratch
        train_input_size=(192, 256),  # MMPose's "256x192"
        builders="dipr.models.simplebaseline.build",
    )


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        *(_movenet(variant) for variant in sorted(VARIANTS)),
        *(_simplebaseline(depth) for depth in DEPTHS),
    )
}
NAMES: tuple[str, ...] = tuple(ARCHITECTURES)  # the pose models
MOVENET_VARIANTS: tuple[str, ...] = tuple(sorted(VARIANTS))
DEFAULT_ONNX = ARCHITECTURES[DEFAULT_EXPORT_ARCH].default_onnx

DETECTORS: dict[str, DetectorArchitecture] = {
    MULTIPOSE.name: DetectorArchitecture(
        name=MULTIPOSE.name,
        family="movenet",
        input_size=(MULTIPOSE.input_size, MULTIPOSE.input_size),
        weights=WEIGHTS_DIR / f"{MULTIPOSE.name}.safetensors",
        max_persons=MULTIPOSE_MAX_PERSONS,
        builders="dipr.models.movenet.build",
    )
}
DETECTOR_NAMES: tuple[str, ...] = tuple(DETECTORS)
DEFAULT_DETECTOR_ONNX = DETECTORS[DEFAULT_DETECTOR_ARCH].default_onnx
EXPORT_NAMES: tuple[str, ...] = NAMES + DETECTOR_NAMES  # what `dipr export --arch` offers


def architecture(name: str) -> Architecture:
    """The pose model of that name; ValueError for a detector or an unknown name."""
    if name in DETECTORS:
        raise ValueError(f"{name} is a person detector, not a pose model")
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(NAMES)}") from None


def detector_architecture(name: str) -> DetectorArchitecture:
    """The person detector of that name; ValueError for a pose model or an unknown name."""
    if name in ARCHITECTURES:
        raise ValueError(f"{name} is a pose model, not a person detector")
    try:
        return DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTOR_NAMES)}") from None


def export_architecture(name: str) -> Architecture | DetectorArchitecture:
    """Any record `dipr export` can build: a pose model or a person detector."""
    if name in DETECTORS:
        return DETECTORS[name]
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(EXPORT_NAMES)
        raise ValueError(f"unknown architecture {name!r}; known: {known}") from None


def movenet_variant(variant: str) -> Architecture:
    """The MoveNet of a variant name ("thunder"), `dipr export --variant`'s older spelling."""
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown MoveNet variant {variant!r}; known: {', '.join(MOVENET_VARIANTS)}"
        )
    return ARCHITECTURES[VARIANTS[variant].name]
