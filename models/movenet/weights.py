"""Load the committed MoveNet weights (made by `dipr.models.movenet.importer`), other weights in
that layout, or a `dipr train` fine-tuning checkpoint."""

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dipr.models.checkpoints import is_train_checkpoint, read_train_checkpoint
from dipr.models.movenet.network import MoveNet
from dipr.models.movenet.variants import VARIANTS

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"


def default_weights(variant: str) -> Path:
    return WEIGHTS_DIR / f"movenet-{variant}.safetensors"


def weights_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_movenet(variant: str, path: Path | None = None) -> MoveNet:
    """The network in eval mode with fp32 parameters; clear errors for bad names or files."""
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown MoveNet variant {variant!r}; known: {', '.join(sorted(VARIANTS))}"
        )
    path = path or default_weights(variant)
    if not path.is_file():
        raise FileNotFoundError(
            f"MoveNet weights not found at {path}; regenerate them with "
            "`python -m dipr.models.movenet.importer`"
        )
    model = MoveNet(VARIANTS[variant])
    if is_train_checkpoint(path):
        checkpoint = read_train_checkpoint(path, with_optimizer=False)
        arch = checkpoint.config.get("arch")
        if arch != VARIANTS[variant].name:
            raise ValueError(f"{path} was trained as {arch}, not {VARIANTS[variant].name}")
        tensors = checkpoint.model
    else:
        tensors = load_file(path)
    state = {k: v.to(torch.float32) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
