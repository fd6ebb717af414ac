"""The checkpoint files of `dipr train`: one safetensors file, nothing ever unpickled.

Tensors:
- `model.<name>`: the network's state_dict (parameters and BatchNorm statistics);
- `optimizer.<i>.<key>`: the optimizer's per-parameter state (Adam's exp_avg, exp_avg_sq, step),
  i indexing the parameters in `named_parameters()` order.

Metadata (strings): `format` = FORMAT; `config` = the training configuration as JSON (arch,
input size, β, coordinate convention, …; what `dipr export` needs to rebuild the deployable
model); `step` = optimizer steps taken; `optimizer` = JSON with the param groups' hyper-parameters,
the parameter names in index order and every non-tensor state entry (so resuming needs no pickle
anywhere).

`dipr export --checkpoint run/last.safetensors` reads only `model.*` and `config`; `dipr train
--resume` reads everything and restores it into the network and its optimizer.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

FORMAT = "dipr-train-checkpoint/1"
MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."
META_FORMAT = "format"
META_CONFIG = "config"
META_STEP = "step"
META_OPTIMIZER = "optimizer"
LAST = "last.safetensors"  # a run folder's latest checkpoint, the one `--resume` continues


@dataclass(frozen=True)
class TrainCheckpoint:
    model: dict[str, Tensor]
    config: dict[str, Any]
    step: int
    optimizer_tensors: dict[str, Tensor]  # keys without the prefix: "<i>.<key>"
    optimizer_meta: dict[str, Any]


def safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a safetensors file, or None if the file is not safetensors."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return None


def is_train_checkpoint(path: Path) -> bool:
    metadata = safetensors_metadata(path)
    return metadata is not None and metadata.get(META_FORMAT) == FORMAT


def read_train_checkpoint(path: Path, with_optimizer: bool = True) -> TrainCheckpoint:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metadata = safetensors_metadata(path)
    if metadata is None or metadata.get(META_FORMAT) != FORMAT:
        raise ValueError(f"{path} is not a `dipr train` checkpoint (safetensors, format {FORMAT})")
    model: dict[str, Tensor] = {}
    optimizer: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if key.startswith(MODEL_PREFIX):
                model[key[len(MODEL_PREFIX) :]] = handle.get_tensor(key)
            elif with_optimizer and key.startswith(OPTIMIZER_PREFIX):
                optimizer[key[len(OPTIMIZER_PREFIX) :]] = handle.get_tensor(key)
    return TrainCheckpoint(
        model=model,
        config=json.loads(metadata[META_CONFIG]),
        step=int(metadata[META_STEP]),
        optimizer_tensors=optimizer,
        optimizer_meta=json.loads(metadata.get(META_OPTIMIZER, "{}")),
    )


def write_train_checkpoint(
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


def restore_train_checkpoint(
    checkpoint: TrainCheckpoint, model: nn.Module, optimizer: torch.optim.Optimizer
) -> int:
    """Load weights and optimizer state in place and return the step to continue from; the
    parameters must match by name and order."""
    model.load_state_dict(checkpoint.model, strict=True)
    meta = checkpoint.optimizer_meta
    names = [name for name, _ in model.named_parameters()]
    if meta.get("param_names") != names:
        raise ValueError("the checkpoint's optimizer was built for other parameters")
    if meta.get("type") != type(optimizer).__name__:
        raise ValueError(
            f"the checkpoint's optimizer is {meta.get('type')}, not {type(optimizer).__name__}"
        )
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
    return checkpoint.step
