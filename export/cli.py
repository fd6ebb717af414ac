"""`dipr export`: write the deployable network as ONNX and check it against PyTorch."""

import argparse
import sys
from pathlib import Path

from dipr.models.movenet.variants import VARIANTS
from dipr.models.regions import REGIONS
from dipr.models.simplebaseline.variants import (
    ARCH_PREFIX,
    ARCHS,
    DEBIAS_MODES,
    MMPOSE_PRESETS,
    parse_input_size,
)

DEFAULT_OUTPUT = Path(__file__).parents[1] / "models" / "onnx" / "movenet-thunder.onnx"
DEFAULT_PARITY_IMAGES = Path(__file__).parents[1] / "tests" / "fixtures" / "photos"
MOVENET_ARCHS = tuple(f"movenet-{variant}" for variant in sorted(VARIANTS))
# Worst keypoint difference ORT vs PyTorch allowed, in input pixels.
TOLERANCE_FP32 = 0.01
TOLERANCE_FP16 = 0.5


def _input_size(text: str) -> tuple[int, int]:
    try:
        return parse_input_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=__doc__, description=__doc__)
    parser.add_argument(
        "--arch",
        choices=MOVENET_ARCHS + ARCHS,
        help="network (default: movenet-<variant>)",
    )
    parser.add_argument(
        "--variant", choices=sorted(VARIANTS), help="MoveNet variant (default: thunder)"
    )
    parser.add_argument("--weights", type=Path, help="MoveNet safetensors (default: committed)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="a `dipr train` checkpoint (.safetensors), or an MMPose SimpleBaseline .pth",
    )
    parser.add_argument(
        "--input-size",
        type=_input_size,
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


def _architecture(args: argparse.Namespace) -> str:
    if args.arch is None:
        return f"movenet-{args.variant or 'thunder'}"
    if args.variant is not None and args.arch != f"movenet-{args.variant}":
        raise ValueError(f"--variant {args.variant} contradicts --arch {args.arch}")
    return str(args.arch)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `dipr serve` never loads torch.
    from dipr.export.onnx_export import (
        ExportOptions,
        build_pose_model,
        export_onnx,
        load_parity_images,
        parity,
        pose_input_size,
    )
    from dipr.models.simplebaseline.mmpose_import import CheckpointError

    try:
        arch = _architecture(args)
        simplebaseline = arch.startswith(ARCH_PREFIX)
        if simplebaseline and (args.region not in (None, "global") or args.window is not None):
            raise ValueError("SimpleBaseline debiases over the whole map: drop --region/--window")
    except ValueError as error:
        return _fail(str(error))
    output: Path = args.output or DEFAULT_OUTPUT.with_name(f"{arch}.onnx")
    if output.exists() and output.is_dir():
        return _fail(f"output {output} is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "ab"):
            pass
    except OSError as error:
        return _fail(f"cannot write {output}: {error.strerror}")
    options = ExportOptions(
        arch=arch,
        beta=args.beta,
        region="global" if simplebaseline else (args.region or "person"),
        window=7 if args.window is None else args.window,
        weights=args.weights,
        checkpoint=args.checkpoint,
        input_size=args.input_size,
        debias=args.debias,
        mmpose_config=args.mmpose_config,
        fp16=args.fp16,
        version=args.model_version,
    )
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
        pose = build_pose_model(ExportOptions(**{**options.__dict__, "fp16": False}))[0]
    worst = parity(pose, output, images)
    for batch, difference in worst.items():
        print(f"parity batch {batch}: max |ORT - PyTorch| = {difference:.2e} px")
    if max(worst.values()) > tolerance:
        return _fail(f"parity failed: {max(worst.values()):.3g} px > {tolerance} px")
    print(f"parity ok (tolerance {tolerance} px)")
    return 0


def _fail(message: str) -> int:
    print(f"dipr export: error: {message}", file=sys.stderr)
    return 1
