"""Write and restore `dipr train` checkpoints (format: `dipr.models.checkpoints`).

The optimizer's state is flattened into the same safetensors file (`optimizer.<i>.<key>`), its
non-tensor parts (param-group hyper-parameters, scalar state) into JSON metadata: resuming needs
no pickle anywhere.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from dipr.models.checkpoints import (
    FORMAT,
    META_CONFIG,
    META_FORMAT,
    META_OPTIMIZER,
    META_STEP,
    MODEL_PREFIX,
    OPTIMIZER_PREFIX,
    TrainCheckpoint,
)

LAST = "last.safetensors"


@dataclass(frozen=True)
class Restored:
    step: int
    config: dict[str, Any]


def save_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: dict[str, Any],
) -> None:
    """Atomically (write, then rename) save model, optimizer state, step and config."""
    tensors: dict[str, Tensor] = {
        f"{MODEL_PREFIX}{name}": value.detach().cpu().contiguous()
        for name, value in model.state_dict().items()
    }
    state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    optimizer_meta = {
        "type": type(optimizer).__name__,
        "param_groups": state["param_groups"],
        "param_names": [name for name, _ in model.named_parameters()],
        "scalars": scalars,
    }
    metadata = {
        META_FORMAT: FORMAT,
        META_CONFIG: json.dumps(config),
        META_STEP: str(step),
        META_OPTIMIZER: json.dumps(optimizer_meta),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


def restore(
    checkpoint: TrainCheckpoint, model: nn.Module, optimizer: torch.optim.Optimizer
) -> Restored:
    """Load weights and optimizer state in place; the parameters must match by name and order."""
    model.load_state_dict(checkpoint.model, strict=True)
    meta = checkpoint.optimizer_meta
    names = [name for name, _ in model.named_parameters()]
    if meta.get("param_names") != names:
        raise ValueError("the checkpoint's optimizer was built for other parameters")
    if meta.get("type") != type(optimizer).__name__:
        raise ValueError(f"the checkpoint's optimizer is {meta.get('type')}, not Adam")
    state: dict[int, dict[str, Any]] = {}
    for key, value in checkpoint.optimizer_tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, entries in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    # load_state_dict moves state tensors to the parameters' device and dtype (but keeps Adam's
    # `step` on the CPU as it expects).
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return Restored(step=checkpoint.step, config=checkpoint.config)
