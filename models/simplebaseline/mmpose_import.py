"""MMPose SimpleBaseline checkpoints (.pth) → a state_dict of `SimpleBaseline`.

Layouts recognised (checked against MMPose's source, open-mmlab/mmpose):

- Integral heads (`ipr_res50`, `ipr_res50_dsnt`, `ipr_res50_debias`, all `DSNTHead`, a subclass of
  `IntegralRegressionHead`): `backbone.*`, `head.simplebaseline_head.deconv_layers.{0,1,3,4,6,7}.*`,
  `head.simplebaseline_head.final_layer.{weight,bias}`, and `head.linspace_x` [1, 1, 1, w] =
  arange(w)/w, `head.linspace_y` [1, 1, h, 1] = arange(h)/h (nn.Parameters with
  requires_grad=False, so they are saved). The linspaces are checked and dropped: this project
  computes its coordinates itself; their shapes give the heatmap size (64×64 → 256×256 input).
  MMPose's own loader also maps `head.conv_layers.*`/`head.final_layer.*` of older integral
  checkpoints into `simplebaseline_head`; so does this one.
- SimpleBaseline heatmap heads (`td-hm_res50_*`, `HeatmapHead`): `head.deconv_layers.*`,
  `head.final_layer.*`; MMPose 0.x named the head `keypoint_head`.
- `backbone.*` is MMPose's ResNet (`style='pytorch'`), the same names as `dipr.models.resnet`.
- A checkpoint is either a bare state_dict or MMEngine's dict with `state_dict` (and `meta`,
  whose `cfg` holds the config text when the training run saved it); a `module.` prefix
  (DataParallel) is stripped.

Files are read with `torch.load(weights_only=True)`: tensors and plain containers only, never
arbitrary pickled objects.
"""

import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dipr.models.resnet import DEPTHS, BasicBlock
from dipr.models.simplebaseline.network import SimpleBaseline
from dipr.models.simplebaseline.variants import STRIDE, HeadKind

INTEGRAL_HEAD = "head.simplebaseline_head."
LINSPACE_X = "head.linspace_x"
LINSPACE_Y = "head.linspace_y"
# Our head's names → the prefixes the other layouts use for them.
HEATMAP_HEAD_PREFIXES = ("head.", "keypoint_head.")
SHOWN = 8  # keys listed in an error before "and N more"


class CheckpointError(ValueError):
    """The file is not a checkpoint of the network asked for; the message says why."""


@dataclass(frozen=True)
class MMPoseCheckpoint:
    state_dict: dict[str, Tensor]  # in SimpleBaseline's names, float32
    head: HeadKind
    heatmap_size: tuple[int, int] | None  # (w, h) from the linspaces; None for heatmap heads
    config_text: str | None  # meta["cfg"] when the checkpoint holds its config

    @property
    def input_size(self) -> tuple[int, int] | None:
        if self.heatmap_size is None:
            return None
        return (self.heatmap_size[0] * STRIDE, self.heatmap_size[1] * STRIDE)


def read_torch_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, object]]:
    """(state_dict, meta) of a .pth file, loaded with weights_only=True."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain containers, which "
            f"torch.load(weights_only=True) refuses ({str(error).splitlines()[0]}). Re-save just "
            "its weights where you trust the file: "
            "torch.save(torch.load(p, weights_only=False)['state_dict'], 'weights.pth')"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {error}") from error
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(loaded).__name__}")
    meta = loaded.get("meta") if isinstance(loaded.get("meta"), dict) else {}
    state = loaded.get("state_dict", loaded)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: no tensors found (keys: {_listing(list(state))})")
    return tensors, meta  # type: ignore[return-value]


def infer_depth(keys: list[str]) -> int | None:
    """The ResNet depth whose block counts and block type match the `backbone.layerN.i` keys."""
    counts = []
    for stage in range(1, 5):
        indices = {
            int(m.group(1)) for k in keys if (m := re.match(rf"backbone\.layer{stage}\.(\d+)\.", k))
        }
        counts.append(len(indices))
    bottleneck = any(re.match(r"backbone\.layer\d\.\d+\.conv3\.", k) for k in keys)
    for depth, spec in DEPTHS.items():
        if tuple(counts) == spec.blocks and (spec.block is not BasicBlock) == bottleneck:
            return depth
    return None


def _linspace_size(tensor: Tensor, axis: str) -> int:
    """Check an MMPose linspace buffer and return its length. Values must be arange(n)/n
    varying along x (last dim) for linspace_x and along y (second last) for linspace_y."""
    values = tensor.float()
    dim = -1 if axis == "x" else -2
    layout = "[1, 1, 1, w]" if axis == "x" else "[1, 1, h, 1]"
    if values.dim() < 2 or values.numel() != values.shape[dim]:
        raise CheckpointError(
            f"head.linspace_{axis} has shape {tuple(values.shape)}; MMPose's "
            f"IntegralRegressionHead stores it as {layout}"
        )
    size = values.shape[dim]
    expected = torch.arange(size, dtype=torch.float32) / size
    if not torch.allclose(values.flatten(), expected, atol=1e-6):
        raise CheckpointError(
            f"head.linspace_{axis} is not arange({size})/{size}: not the coordinate convention "
            "this importer knows"
        )
    return size


def convert_mmpose_state_dict(
    state: dict[str, Tensor],
    depth: int,
    config_text: str | None = None,
    reference: dict[str, Tensor] | None = None,
) -> MMPoseCheckpoint:
    """Rename an MMPose state_dict to SimpleBaseline's names and check it is complete.

    Raises CheckpointError naming the missing and unexpected keys (in the checkpoint's own names)
    and any shape mismatch.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    integral = (
        LINSPACE_X in state
        or LINSPACE_Y in state
        or any(k.startswith(INTEGRAL_HEAD) for k in state)
    )
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our name → the checkpoint's
    heatmap_size = None
    if integral:
        missing_linspace = [k for k in (LINSPACE_X, LINSPACE_Y) if k not in state]
        if missing_linspace:
            raise CheckpointError(
                f"integral-head checkpoint without {', '.join(missing_linspace)}: "
                "not an MMPose IntegralRegressionHead/DSNTHead state_dict"
            )
        heatmap_size = (
            _linspace_size(state[LINSPACE_X], "x"),
            _linspace_size(state[LINSPACE_Y], "y"),
        )
        old_layout = not any(k.startswith(INTEGRAL_HEAD) for k in state)
        head_prefixes = (
            {"head.conv_layers.": "head.deconv_layers.", "head.final_layer.": "head.final_layer."}
            if old_layout
            else {
                f"{INTEGRAL_HEAD}deconv_layers.": "head.deconv_layers.",
                f"{INTEGRAL_HEAD}final_layer.": "head.final_layer.",
            }
        )
    else:
        prefix = next(
            (p for p in HEATMAP_HEAD_PREFIXES if any(k.startswith(p) for k in state)), "head."
        )
        head_prefixes = {
            f"{prefix}deconv_layers.": "head.deconv_layers.",
            f"{prefix}final_layer.": "head.final_layer.",
        }
    # What the expected names would be called in this checkpoint, for error messages.
    expected = reference if reference is not None else SimpleBaseline(depth).state_dict()
    theirs_for = {}
    for ours in expected:
        theirs = ours
        for old, new in head_prefixes.items():
            if ours.startswith(new):
                theirs = old + ours[len(new) :]
        theirs_for[ours] = theirs
    unexpected = []
    for key, value in state.items():
        if key in (LINSPACE_X, LINSPACE_Y):
            continue
        ours = key
        for old, new in head_prefixes.items():
            if key.startswith(old):
                ours = new + key[len(old) :]
                break
        if ours in expected:
            renamed[ours] = value
            origin[ours] = key
        else:
            unexpected.append(key)
    # BatchNorm's step counter is not needed to run or fine-tune: tolerate its absence.
    missing = [
        theirs_for[k]
        for k in expected
        if k not in renamed and not k.endswith("num_batches_tracked")
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    for ours, value in renamed.items():
        if tuple(value.shape) != tuple(expected[ours].shape):
            shape = tuple(expected[ours].shape)
            problems.append(f"{origin[ours]} has shape {tuple(value.shape)}, expected {shape}")
    if problems:
        guess = infer_depth(list(state))
        hint = ""
        if guess is not None and guess != depth:
            hint = (
                f" (its backbone looks like ResNet-{guess}: try --arch simplebaseline-res{guess})"
            )
        raise CheckpointError(
            f"not an MMPose SimpleBaseline ResNet-{depth} checkpoint{hint}; " + "; ".join(problems)
        )
    for key, value in expected.items():
        if key not in renamed:
            renamed[key] = value  # num_batches_tracked only
    state_dict = {
        k: v.to(torch.float32) if v.is_floating_point() else v for k, v in renamed.items()
    }
    return MMPoseCheckpoint(
        state_dict=state_dict,
        head="integral" if integral else "heatmap",
        heatmap_size=heatmap_size,
        config_text=config_text,
    )


def load_mmpose_checkpoint(
    path: Path, depth: int, reference: dict[str, Tensor] | None = None
) -> MMPoseCheckpoint:
    """Read and convert an MMPose .pth; `reference` is the target network's state_dict."""
    state, meta = read_torch_checkpoint(path)
    config_text = meta.get("cfg") if isinstance(meta.get("cfg"), str) else None
    try:
        return convert_mmpose_state_dict(state, depth, config_text, reference)  # type: ignore[arg-type]
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return shown if len(keys) <= SHOWN else f"{shown} and {len(keys) - SHOWN} more"
