"""`dipr bench`: the service against the hardware limit and a naive baseline, side by side."""

import argparse
import shutil
import sys
from pathlib import Path

from dipr.extras import missing_extras
from dipr.models.registry import DEFAULT_DETECTOR_ONNX, DEFAULT_ONNX

REPO = Path(__file__).resolve().parents[1]
ASTRONAUT_BOX = (17.3, 11.4, 361.3, 508.7)  # the default photo's person, x1 y1 x2 y2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help=__doc__, description=__doc__)
    parser.add_argument("--model", type=Path, default=DEFAULT_ONNX)
    parser.add_argument(
        "--detector",
        type=Path,
        default=DEFAULT_DETECTOR_ONNX,
        help="person detector for the requests without boxes (default: the shipped one)",
    )
    parser.add_argument(
        "--no-detection", action="store_true", help="only requests whose persons are known"
    )
    parser.add_argument("--photo", type=Path, default=REPO / "tests/fixtures/photos/astronaut.jpg")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--provider",
        choices=["cpu", "cuda", "tensorrt"],
        default="cpu",
        help="ONNX Runtime provider for all three (cuda, tensorrt: IOBinding in the service and "
        "the limit; the run fails rather than fall back)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="DIPR_NAME=VALUE",
        help="a setting for the service under test (repeatable), e.g. DIPR_BATCH_DELAY_MS=2",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short stages and fewer points (a smoke run, not figures)",
    )
    parser.add_argument(
        "--frontend",
        action="store_true",
        help="only the front end's own cost (issue #16): the service with a null model, its CPU "
        "per request against decode + warp, --workers 1 and 2 (a section of bench.md otherwise)",
    )
    parser.add_argument(
        "--variants",
        action="store_true",
        help="only the default model's variants (issue #14): fp32, int8, flip, int8+flip with "
        "ONNX Runtime alone, fp32 and int8 through the service (a section of bench.md otherwise; "
        "exports them: needs the dev set for the int8 accuracy gate)",
    )
    parser.add_argument(
        "--storm",
        action="store_true",
        help="instead: the storm of issue #15 (8 clients posting 16 images of 7000×7000 each, "
        "a 1280×720 photo every 2 s) against the service, and its report (no `hey` needed)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dipr.benchmarks.report import markdown, plot
    from dipr.benchmarks.run import BenchConfig, report_json, run_bench
    from dipr.service.backend import ProviderUnavailable

    service_env = dict(item.split("=", 1) for item in args.service_env if "=" in item)
    if len(service_env) != len(args.service_env):
        print("dipr bench: error: --service-env takes DIPR_NAME=VALUE", file=sys.stderr)
        return 2
    if args.storm:
        return run_storm_bench(args, service_env)
    if shutil.which("hey") is None:
        print("dipr bench: error: needs `hey` (Debian package hey)", file=sys.stderr)
        return 1
    problem = missing_extras({"onnx": "export"})  # the null model is written with onnx
    if problem is not None:
        print(f"dipr bench: error: {problem}", file=sys.stderr)
        return 1
    if args.variants or args.frontend:
        args.out.mkdir(parents=True, exist_ok=True)
    if args.variants:
        return _section_only(args, "variants", run_variants_bench(args, service_env))
    if args.frontend:
        return _section_only(args, "frontend", run_frontend_bench(args, service_env))
    config = BenchConfig(
        model=args.model,
        photo=args.photo,
        out_dir=args.out,
        detector=None if args.no_detection else args.detector,
        provider=args.provider,
        service_env=service_env,
    )
    if args.quick:
        config.batch_sizes, config.concurrencies = [1, 4], [1, 8]
        config.detect_batch_sizes, config.detect_concurrencies = [1, 2], [1, 8]
        config.boxes_concurrency, config.limit_seconds, config.load_seconds = 8, 1.0, 2.0
        config.rounds = 1
    try:
        report = run_bench(config)
    except ProviderUnavailable as error:  # e.g. --provider cuda on a machine without a GPU
        print(f"dipr bench: error: {error}", file=sys.stderr)
        return 1
    (args.out / "bench.json").write_text(report_json(report))
    table = "\n".join(
        [
            markdown(report),
            run_frontend_bench(args, service_env),
            run_variants_bench(args, service_env),
        ]
    )
    (args.out / "bench.md").write_text(table)
    plot(report, args.out / "bench.png")
    for leftover in args.out.glob("body-*.bin"):
        leftover.unlink()
    print(table)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png, frontend.json, variants.json")
    return 0


def _section_only(args: argparse.Namespace, name: str, section: str) -> int:
    """One section of the bench run alone: printed, and written as NAME.md beside NAME.json."""
    (args.out / f"{name}.md").write_text(section)
    print(section)
    print(f"wrote {args.out}/{name}.json, {name}.md")
    return 0


def run_frontend_bench(args: argparse.Namespace, service_env: dict[str, str]) -> str:
    """The front end's table (`benchmarks/frontend.py`) as a Markdown section; its figures in
    frontend.json."""
    from dipr.benchmarks.frontend import FrontendConfig, markdown, report_json, run_frontend

    config = FrontendConfig(photo=args.photo, reference_model=args.model, service_env=service_env)
    if args.quick:
        config.rounds, config.slice_seconds, config.floor_iterations = 1, 1.5, 30
    report = run_frontend(config)
    (args.out / "frontend.json").write_text(report_json(report))
    return "## Front end (null model)\n\n" + markdown(report)


def run_variants_bench(args: argparse.Namespace, service_env: dict[str, str]) -> str:
    """The variants' table (`benchmarks/variants.py`) as a Markdown section; figures in
    variants.json. The photo's person box is the astronaut's unless --photo changed the photo."""
    import cv2

    from dipr.benchmarks.variants import VariantsConfig, markdown, report_json, run_variants

    if args.photo.name == "astronaut.jpg":
        box = list(ASTRONAUT_BOX)
    else:
        height, width = cv2.imread(str(args.photo)).shape[:2]
        box = [0.0, 0.0, float(width), float(height)]
    config = VariantsConfig(photo=args.photo, box=box, service_env=service_env)
    if args.quick:
        config.rounds, config.slice_seconds = 1, 1.5
    report = run_variants(config)
    (args.out / "variants.json").write_text(report_json(report))
    return "## Variants: fp32, int8, flip test\n\n" + markdown(report)


def run_storm_bench(args: argparse.Namespace, service_env: dict[str, str]) -> int:
    """`dipr bench --storm`: the service on a free loopback port (deadline 10 s, other settings
    their defaults unless --service-env says otherwise), the storm, its report."""
    from dipr.benchmarks.servers import ServerProcess, free_port
    from dipr.benchmarks.storm import available_mib, markdown_header, run_storm

    env = {
        "DIPR_MODEL_PATH": str(args.model),
        "DIPR_PROVIDER": args.provider,
        "DIPR_DETECTOR_PATH": str(args.detector),
        "DIPR_REQUEST_TIMEOUT_S": "10",
        "DIPR_DRAIN_DELAY_S": "0",
        "DIPR_SHUTDOWN_GRACE_S": "5",  # requests still waiting at the end: not for long
        **service_env,
    }
    port = free_port()
    command = [sys.executable, "-m", "dipr.cli", "serve", "--port", str(port)]
    with ServerProcess([*command, "--log-level", "warning"], port, env) as server:
        server.wait_ready("/health/ready")
        report = run_storm(
            server.url,
            server.process.pid,
            duration_s=10.0 if args.quick else 40.0,
            request_timeout_s=float(env["DIPR_REQUEST_TIMEOUT_S"]),
            abort_rss_mib=0.6 * available_mib(),  # the machine first: then the server is killed
        )
    print(report.summary())
    print(markdown_header())
    print(report.markdown_row())
    return 0
