"""The `dipr` console script: one subcommand per part of the product, each defined with its part."""

import argparse

from dipr.benchmarks import cli as bench_cli
from dipr.evaluation import cli as eval_cli
from dipr.export import cli as export_cli
from dipr.service import cli as serve_cli
from dipr.service import client as pose_cli
from dipr.training import cli as train_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dipr", description=__doc__)
    subparsers = parser.add_subparsers(required=True, metavar="COMMAND")
    export_cli.add_parser(subparsers)
    eval_cli.add_parser(subparsers)
    serve_cli.add_parser(subparsers)
    pose_cli.add_parser(subparsers)
    train_cli.add_parser(subparsers)
    bench_cli.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
