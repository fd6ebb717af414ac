"""Load a SimpleBaseline from a `dipr train` checkpoint or an MMPose checkpoint.

What a checkpoint says about how its network was trained decides how it is read out:
- `dipr train` (.safetensors): β, input size and the "dipr" coordinate convention come from the
  checkpoint's config; it was trained with the paper's head.
- MMPose (.pth, or a safetensors file with MMPose's key names): the "mmpose" coordinate
  convention; the input size comes from the integral head's linspaces (heatmap size × 4) or the
  config; β and whether MMPose's debias was on are not in the weights and come from the config
  (`--mmpose-config`: a preset name or the config file, or the `cfg` text MMEngine stores in the
  checkpoint's meta).
"""

from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file

from dipr.models.simplebaseline.mmpose_import import (
    CheckpointError,
    convert_mmpose_state_dict,
    load_mmpose_checkpoint,
)
from dipr.models.simplebaseline.network import SimpleBaseline
from dipr.models.simplebaseline.variants import (
    ARCH_PREFIX,
    HEATMAP_BETA,
    MMPOSE_PRESETS,
    Coordinates,
    DebiasMode,
    MMPoseConfig,
    parse_mmpose_config,
)
from dipr.models.train_checkpoint import (
    is_train_checkpoint,
    read_train_checkpoint,
    safetensors_metadata,
)


@dataclass(frozen=True)
class LoadedSimpleBaseline:
    network: SimpleBaseline  # eval mode, fp32
    source: str  # "dipr" | "mmpose"
    coordinates: Coordinates
    input_size: tuple[int, int] | None  # what it was trained at, when the checkpoint says
    beta: float | None  # the β it was trained with, when known
    trained_debias: DebiasMode | None  # the head it was trained with, when known
    mmpose: MMPoseConfig | None


def resolve_mmpose_config(value: str | None) -> MMPoseConfig | None:
    """A preset name (`ipr_res50_debias`, …) or the path of an MMPose config file."""
    if value is None:
        return None
    if value in MMPOSE_PRESETS:
        return MMPOSE_PRESETS[value]
    path = Path(value)
    if path.is_file():
        return parse_mmpose_config(path.read_text(encoding="utf-8"), path.stem)
    raise ValueError(
        f"--mmpose-config {value!r} is neither a preset ({', '.join(MMPOSE_PRESETS)}) "
        "nor an MMPose config file"
    )


def load_simplebaseline(
    depth: int, path: Path, mmpose_config: MMPoseConfig | None = None
) -> LoadedSimpleBaseline:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    network = SimpleBaseline(depth)
    reference = network.state_dict()
    if is_train_checkpoint(path):
        checkpoint = read_train_checkpoint(path, with_optimizer=False)
        config = checkpoint.config
        arch = str(config.get("arch", ""))
        if arch != f"{ARCH_PREFIX}{depth}":
            raise CheckpointError(
                f"{path} was trained as {arch or 'an unknown architecture'}, not "
                f"{ARCH_PREFIX}{depth}: pass --arch {arch}"
            )
        _load_strict(network, checkpoint.model, path)
        width, height = config["input_size"]
        return LoadedSimpleBaseline(
            network=network.eval(),
            source="dipr",
            coordinates="dipr",
            input_size=(int(width), int(height)),
            beta=float(config["beta"]),
            trained_debias="paper",
            mmpose=None,
        )
    if safetensors_metadata(path) is not None:
        try:
            mmpose = convert_mmpose_state_dict(load_file(path), depth, None, reference)
        except CheckpointError as error:
            raise CheckpointError(
                f"{path}: neither a `dipr train` checkpoint nor MMPose weights: {error}"
            ) from error
    else:
        mmpose = load_mmpose_checkpoint(path, depth, reference)
    config = mmpose_config
    if config is None and mmpose.config_text:
        config = parse_mmpose_config(mmpose.config_text, f"{path.name} meta.cfg")
    if config is not None:
        if config.depth != depth:
            raise CheckpointError(
                f"the MMPose config {config.name} is a ResNet-{config.depth}, "
                f"not {ARCH_PREFIX}{depth}"
            )
        if config.head != mmpose.head:
            raise CheckpointError(
                f"the MMPose config {config.name} has a {config.head} head but {path.name} "
                f"holds a {mmpose.head} head"
            )
    _load_strict(network, mmpose.state_dict, path)
    input_size = mmpose.input_size or (config.input_size if config else None)
    if config is not None:
        beta, trained = config.beta, config.debias
    elif mmpose.head == "heatmap":
        beta, trained = HEATMAP_BETA, "none"
    else:
        beta, trained = None, None  # an integral head's β is not in its weights
    return LoadedSimpleBaseline(
        network=network.eval(),
        source="mmpose",
        coordinates="mmpose",
        input_size=input_size,
        beta=beta,
        trained_debias=trained,
        mmpose=config,
    )


def _load_strict(network: SimpleBaseline, state: dict, path: Path) -> None:
    try:
        result = network.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=False
        )
    except RuntimeError as error:  # shape mismatches
        raise CheckpointError(f"{path}: {error}") from error
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: missing keys {missing[:8]}, unexpected keys {result.unexpected_keys[:8]}"
        )


def load_pretrained(network: SimpleBaseline, path: Path) -> str:
    """Initialise `network` for training from `path`; returns what was loaded.

    Accepts a `dipr train` SimpleBaseline checkpoint (everything), an MMPose SimpleBaseline
    checkpoint (everything; its coordinate convention differs from ours by half a heatmap cell,
    which fine-tuning absorbs), or backbone-only ImageNet ResNet weights in MMPose's or
    torchvision's layout (`conv1.weight`, `layer1.0.conv1.weight`, …, with or without a
    `backbone.` prefix; `fc.*` is ignored), as .pth (weights_only) or .safetensors.
    """
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path}")
    if is_train_checkpoint(path):
        checkpoint = read_train_checkpoint(path, with_optimizer=False)
        _load_strict(network, checkpoint.model, path)
        return "dipr checkpoint"
    if safetensors_metadata(path) is not None:
        state = load_file(path)
    else:
        from dipr.models.simplebaseline.mmpose_import import read_torch_checkpoint

        state, _ = read_torch_checkpoint(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith(("head.", "keypoint_head.")) for k in state):
        converted = convert_mmpose_state_dict(state, network.depth, None, network.state_dict())
        _load_strict(network, converted.state_dict, path)
        return "MMPose SimpleBaseline"
    backbone = {
        k.removeprefix("backbone."): v
        for k, v in state.items()
        if not k.removeprefix("backbone.").startswith("fc.")
    }
    try:
        result = network.backbone.load_state_dict(
            {k: v.float() if v.is_floating_point() else v for k, v in backbone.items()},
            strict=False,
        )
    except RuntimeError as error:
        raise CheckpointError(f"{path}: {error}") from error
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{path} is not a ResNet-{network.depth} backbone: missing keys {missing[:8]}, "
            f"unexpected keys {result.unexpected_keys[:8]}"
        )
    return "ResNet backbone"
