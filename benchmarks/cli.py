"""`dipr bench`: the service against the hardware limit and a naive baseline, side by side."""

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help=__doc__, description=__doc__)
    parser.add_argument("--model", type=Path, default=REPO / "models/onnx/movenet-thunder.onnx")
    parser.add_argument("--photo", type=Path, default=REPO / "tests/fixtures/photos/astronaut.jpg")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short stages and fewer points (a smoke run, not figures)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dipr.benchmarks.report import markdown, plot
    from dipr.benchmarks.run import BenchConfig, report_json, run_bench

    if shutil.which("hey") is None:
        print("dipr bench: error: needs `hey` (Debian package hey)", file=sys.stderr)
        return 1
    config = BenchConfig(model=args.model, photo=args.photo, out_dir=args.out)
    if args.quick:
        config.batch_sizes, config.concurrencies = [1, 4], [1, 8]
        config.boxes_concurrency, config.limit_seconds, config.load_seconds = 8, 1.0, 2.0
        config.rounds = 1
    report = run_bench(config)
    (args.out / "bench.json").write_text(report_json(report))
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    plot(report, args.out / "bench.png")
    for leftover in args.out.glob("body-*.bin"):
        leftover.unlink()
    print(table)
    print(f"wrote {args.out}/bench.json, bench.md, bench.png")
    return 0
