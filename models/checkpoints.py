"""The checkpoint files of `dipr train`: one safetensors file, nothing ever unpickled.

Tensors:
- `model.<name>`: the network's state_dict (parameters and BatchNorm statistics);
- `optimizer.<i>.<key>`: the optimizer's per-parameter state (Adam's exp_avg, exp_avg_sq, step),
  i indexing the parameters in `named_parameters()` order.

Metadata (strings): `format` = FORMAT; `config` = the training configuration as JSON (arch,
input size, β, coordinate convention, …; what `dipr export` needs to rebuild the deployable
model); `step` = optimizer steps taken; `optimizer` = JSON with the param groups' hyper-parameters,
the parameter names in index order and every non-tensor state entry.

`dipr export --checkpoint run/last.safetensors` reads only `model.*` and `config`; `dipr train
--resume` reads everything.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

FORMAT = "dipr-train-checkpoint/1"
MODEL_PREFIX = "model."
OPTIMIZER_PREFIX = "optimizer."
META_FORMAT = "format"
META_CONFIG = "config"
META_STEP = "step"
META_OPTIMIZER = "optimizer"


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
