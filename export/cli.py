"""`dipr export`: write the deployable network as ONNX and check it against PyTorch."""

import argparse
import sys
from pathlib import Path

from dipr.models.movenet.variants import VARIANTS
from dipr.models.regions import REGIONS

DEFAULT_OUTPUT = Path(__file__).parents[1] / "models" / "onnx" / "movenet-thunder.onnx"
DEFAULT_PARITY_IMAGES = Path(__file__).parents[1] / "tests" / "fixtures" / "photos"
# Worst keypoint difference ORT vs PyTorch allowed, in input pixels.
TOLERANCE_FP32 = 0.01
TOLERANCE_FP16 = 0.5


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help=__doc__, description=__doc__)
    parser.add_argument("--variant", default="thunder", choices=sorted(VARIANTS))
    parser.add_argument("--weights", type=Path, help="safetensors (default: the committed ones)")
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        help="ONNX path (default: models/onnx/movenet-<variant>.onnx)",
    )
    parser.add_argument("--beta", type=float, default=5.0)
    parser.add_argument("--region", default="person", choices=REGIONS)
    parser.add_argument("--window", type=int, default=7)
    parser.add_argument(
        "--fp16", action="store_true", help="backbone in fp16, the debiasing head stays fp32"
    )
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--parity-images", type=Path, default=DEFAULT_PARITY_IMAGES)
    parser.add_argument("--skip-parity", action="store_true")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `dipr serve` never loads torch.
    from dipr.export.onnx_export import (
        ExportOptions,
        build_pose_model,
        export_onnx,
        load_parity_images,
        parity,
    )

    output: Path = args.output or DEFAULT_OUTPUT.with_name(f"movenet-{args.variant}.onnx")
    if output.exists() and output.is_dir():
        return _fail(f"output {output} is a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "ab"):
            pass
    except OSError as error:
        return _fail(f"cannot write {output}: {error.strerror}")
    options = ExportOptions(
        variant=args.variant,
        beta=args.beta,
        region=args.region,
        window=args.window,
        weights=args.weights,
        fp16=args.fp16,
        version=args.model_version,
    )
    try:
        pose, metadata = build_pose_model(options)
    except (FileNotFoundError, ValueError) as error:
        return _fail(str(error))
    export_onnx(pose, metadata, output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")
    if args.skip_parity:
        return 0
    images = load_parity_images(args.parity_images, pose.network.config.input_size, count=8)
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
