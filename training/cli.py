"""`dipr train`: train a SimpleBaseline (or fine-tune MoveNet) with the paper's debiased L1 loss."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dipr.models.regions import REGIONS
from dipr.models.registry import DEFAULT_TRAINING_ARCH, NAMES, architecture
from dipr.models.simplebaseline.variants import input_size_argument

if TYPE_CHECKING:
    from dipr.training.loop import TrainConfig

# MMPose's schedule: ×0.1 after 170 and 200 of 210 epochs.
MILESTONE_FRACTIONS = (170 / 210, 200 / 210)


def _milestones(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"milestones must be steps, e.g. 800,950: {text}") from (
            error
        )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help=__doc__, description=__doc__)
    parser.add_argument("--output", "-o", type=Path, required=True, help="run folder")
    parser.add_argument("--data", type=Path, help="COCO-format keypoint annotations (JSON)")
    parser.add_argument("--images", type=Path, help="image folder (default: the JSON's folder)")
    parser.add_argument("--arch", choices=NAMES, default=DEFAULT_TRAINING_ARCH)
    parser.add_argument(
        "--input-size",
        type=input_size_argument,
        metavar="WxH",
        help="SimpleBaseline input width x height (default 192x256; MoveNet: its own)",
    )
    parser.add_argument("--beta", type=float, help="softmax temperature (default 10; MoveNet 5)")
    parser.add_argument("--region", choices=REGIONS, help="MoveNet head region (default person)")
    parser.add_argument("--window", type=int, default=7, help="MoveNet head window (default 7)")
    parser.add_argument(
        "--steps", type=int, help="optimizer steps in all (default 10000; resume: the run's)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, help="Adam learning rate (default 5e-4; MoveNet 1e-4)")
    parser.add_argument("--warmup", type=int, help="linear warm-up steps (default min(500, 10%%))")
    parser.add_argument(
        "--milestones",
        type=_milestones,
        help="steps where the rate drops ×0.1 (default: 170/210 and 200/210 of --steps)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-augment", action="store_true", help="no scale/rotation/flip")
    parser.add_argument(
        "--pretrained",
        type=Path,
        help="initial weights: ResNet backbone (ImageNet, MMPose/torchvision layout), an MMPose "
        "SimpleBaseline .pth or a dipr checkpoint; MoveNet: MoveNet safetensors",
    )
    parser.add_argument("--resume", action="store_true", help="continue OUTPUT/last.safetensors")
    parser.add_argument("--stop-at", type=int, help="end this run after this step (resumable)")
    parser.add_argument("--checkpoint-every", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `dipr serve` never loads torch.
    from dipr.core.coco import DatasetError
    from dipr.models.train_checkpoint import LAST
    from dipr.training.loop import RunOptions, train

    output: Path = args.output
    last = output / LAST
    if args.resume:
        if not last.is_file():
            return _fail(f"--resume: no checkpoint at {last}")
        config = _resumed_config(last, args.steps)
    else:
        if last.exists():
            return _fail(f"{last} exists: pass --resume to continue it, or another --output")
        if args.data is None:
            return _fail("--data is required (a COCO-format keypoint JSON)")
        try:
            config = _new_config(args)
        except ValueError as error:
            return _fail(str(error))
    if args.checkpoint_every < 1:
        return _fail("--checkpoint-every must be positive")
    options = RunOptions(
        output=output,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        checkpoint_every=args.checkpoint_every,
        stop_at=args.stop_at,
        progress=not args.no_progress,
    )
    try:
        result = train(config, options, resume=last if args.resume else None)
    except (FileNotFoundError, ValueError, DatasetError) as error:
        return _fail(str(error))
    if result.losses:
        (first_step, first), (_, final) = result.losses[0], result.losses[-1]
        print(f"loss {first:.4f} (step {first_step}) → {final:.4f} (step {result.step})")
    return 0


def _resumed_config(last: Path, steps: int | None) -> TrainConfig:
    from dipr.models.train_checkpoint import META_CONFIG, safetensors_metadata
    from dipr.training.loop import TrainConfig

    metadata = safetensors_metadata(last) or {}
    config = TrainConfig.from_json(json.loads(metadata[META_CONFIG]))
    return config if steps is None else replace(config, steps=steps)


def _new_config(args: argparse.Namespace) -> TrainConfig:
    from dipr.training.dataset import Augmentation
    from dipr.training.loop import TrainConfig

    steps = 10_000 if args.steps is None else args.steps
    arch = architecture(args.arch)
    arch.check_options(region=args.region, input_size=args.input_size)
    if steps < 1 or args.batch_size < 1:
        raise ValueError("--steps and --batch-size must be positive")
    data: Path = args.data
    return TrainConfig(
        arch=arch.name,
        annotations=str(data),
        images=str(args.images or data.parent),
        input_size=args.input_size or arch.train_input_size,
        steps=steps,
        beta=args.beta if args.beta is not None else arch.train_beta,
        region=args.region or arch.default_region,
        window=args.window if arch.takes_window else None,
        batch_size=args.batch_size,
        lr=args.lr if args.lr is not None else arch.train_lr,
        warmup_steps=args.warmup if args.warmup is not None else min(500, steps // 10),
        milestones=args.milestones
        if args.milestones is not None
        else tuple(int(steps * f) for f in MILESTONE_FRACTIONS),
        seed=args.seed,
        augmentation=None if args.no_augment else Augmentation(),
        pretrained=str(args.pretrained) if args.pretrained else None,
    )


def _fail(message: str) -> int:
    print(f"dipr train: error: {message}", file=sys.stderr)
    return 1
