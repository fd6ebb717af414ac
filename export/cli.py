"""`dipr export`: write the deployable network as ONNX and check it against PyTorch."""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from dipr.models.regions import REGIONS
from dipr.models.registry import (
    DEFAULT_EXPORT_ARCH,
    MOVENET_VARIANTS,
    NAMES,
    Architecture,
    architecture,
    movenet_variant,
)
from dipr.models.simplebaseline.variants import DEBIAS_MODES, MMPOSE_PRESETS, input_size_argument

DEFAULT_PARITY_IMAGES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "photos"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=__doc__, description=__doc__)
    parser.add_argument(
        "--arch",
        choices=NAMES,
        help="network (default: movenet-<variant>)",
    )
    parser.add_argument(
        "--variant", choices=MOVENET_VARIANTS, help="MoveNet variant (default: thunder)"
    )
    parser.add_argument("--weights", type=Path, help="MoveNet safetensors (default: committed)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="a `dipr train` checkpoint (.safetensors), or an MMPose SimpleBaseline .pth",
    )
    parser.add_argument(
        "--input-size",
        type=input_size_argument,
        metavar="WxH",
        help="SimpleBaseline input width x height, multiples of 32 (default: the checkpoint's; "
        "MMPose's '256x192' configs are 192x256)",
    )
    parser.add_argument(
        "--debias",
        choices=DEBIAS_MODES,
        help="head correction (default: paper): paper = Gu et al.'s closed form; mmpose = "
        "MMPose's debias formula (serve ipr_res50_debias as trained); none = raw soft-argmax",
    )
    parser.add_argument(
        "--mmpose-config",
        metavar="NAME|PATH",
        help=f"MMPose config of the checkpoint, for its beta and input size: one of "
        f"{', '.join(MMPOSE_PRESETS)} or the config .py file",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="ONNX path (default: models/onnx/<arch>.onnx)",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=None,
        help="softmax temperature (default: MoveNet 5; SimpleBaseline: the trained one)",
    )
    parser.add_argument("--region", choices=REGIONS, help="MoveNet only (default: person)")
    parser.add_argument("--window", type=int, help="MoveNet only (default: 7)")
    parser.add_argument(
        "--fp16", action="store_true", help="backbone in fp16, the debiasing head stays fp32"
    )
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--parity-images", type=Path, default=DEFAULT_PARITY_IMAGES)
    parser.add_argument("--skip-parity", action="store_true")
    parser.set_defaults(run=run)


def _architecture(args: argparse.Namespace) -> Architecture:
    """--arch, or the MoveNet that --variant names (its older spelling)."""
    if args.variant is None:
        return architecture(args.arch or DEFAULT_EXPORT_ARCH)
    named = movenet_variant(args.variant)
    if args.arch is not None and args.arch != named.name:
        raise ValueError(f"--variant {args.variant} contradicts --arch {args.arch}")
    return named


def run(args: argparse.Namespace) -> int:
    # Imported here so that `dipr serve` never loads torch.
    from dipr.export.onnx_export import (
        TOLERANCE_FP16,
        TOLERANCE_FP32,
        ExportOptions,
        ParityError,
        build_pose_model,
        check_parity,
        export_onnx,
        export_request,
        load_parity_images,
        parity,
        pose_input_size,
    )
    from dipr.models.simplebaseline.mmpose_import import CheckpointError

    try:
        arch = _architecture(args)
        options = ExportOptions(
            arch=arch.name,
            beta=args.beta,
            region=args.region,
            window=args.window,
            weights=args.weights,
            checkpoint=args.checkpoint,
            input_size=args.input_size,
            debias=args.debias,
            mmpose_config=args.mmpose_config,
            fp16=args.fp16,
            version=args.model_version,
        )
        export_request(options)  # refuses what this architecture does not take, before writing
    except ValueError as error:
        return _fail(str(error))
    output: Path = args.output or arch.default_onnx
    if output.exists() and output.is_dir():
        return _fail(f"output {output} is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "ab"):
            pass
    except OSError as error:
        return _fail(f"cannot write {output}: {error.strerror}")
    try:
        pose, metadata = build_pose_model(options)
    except (FileNotFoundError, ValueError, CheckpointError) as error:
        return _fail(str(error))
    export_onnx(pose, metadata, output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    if args.skip_parity:
        return 0
    images = load_parity_images(args.parity_images, pose_input_size(pose), count=8)
    tolerance = TOLERANCE_FP16 if args.fp16 else TOLERANCE_FP32
    if args.fp16:
        # fp16 is judged against the fp32 PyTorch network: that is what it approximates.
        pose = build_pose_model(replace(options, fp16=False))[0]
    worst = parity(pose, output, images)
    for batch, difference in worst.items():
        print(f"parity batch {batch}: max |ORT - PyTorch| = {difference:.2e} px")
    try:
        check_parity(worst, tolerance)
    except ParityError as error:
        return _fail(str(error))
    print(f"parity ok (tolerance {tolerance} px)")
    return 0


def _fail(message: str) -> int:
    print(f"dipr export: error: {message}", file=sys.stderr)
    return 1
