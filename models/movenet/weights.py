"""Load the committed MoveNet weights (made by `dipr.models.movenet.tfjs_import`), other weights
in that layout, or a `dipr train` fine-tuning checkpoint."""

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dipr.models.movenet.network import MoveNet
from dipr.models.movenet.variants import VARIANTS
from dipr.models.registry import movenet_variant
from dipr.models.train_checkpoint import is_train_checkpoint, read_train_checkpoint


def default_weights(variant: str) -> Path:
    """The committed weights of a variant, where its registry record says; ValueError naming the
    known variants for any other name."""
    weights = movenet_variant(variant).weights
    assert weights is not None, "every MoveNet record embeds its weights"
    return weights


def weights_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_movenet(variant: str, path: Path | None = None) -> MoveNet:
    """The network in eval mode with fp32 parameters; clear errors for bad names or files."""
    expected = movenet_variant(variant)  # ValueError naming the known variants
    path = path or default_weights(variant)
    if not path.is_file():
        raise FileNotFoundError(
            f"MoveNet weights not found at {path}; regenerate them with "
            "`python -m dipr.models.movenet.tfjs_import`"
        )
    model = MoveNet(VARIANTS[variant])
    if is_train_checkpoint(path):
        checkpoint = read_train_checkpoint(path, with_optimizer=False)
        arch = checkpoint.config.get("arch")
        if arch != expected.name:
            raise ValueError(f"{path} was trained as {arch}, not {expected.name}")
        tensors = checkpoint.model
    else:
        tensors = load_file(path)
    state = {k: v.to(torch.float32) for k, v in tensors.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
