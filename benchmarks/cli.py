"""`dipr bench`: the service against the hardware limit and a naive baseline, side by side."""

import argparse
import shutil
import sys
from pathlib import Path

from dipr.models.registry import DEFAULT_DETECTOR_ONNX, DEFAULT_ONNX

REPO = Path(__file__).resolve().parents[1]


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
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    plot(report, args.out / "bench.png")
    for leftover in args.out.glob("body-*.bin"):
        leftover.unlink()
    print(table)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0


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
