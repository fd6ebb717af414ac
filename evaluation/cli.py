"""`dipr eval`: COCO keypoint accuracy of exported ONNX models, run with onnxruntime (CPU)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dipr.core.coco import DEV_DATA_VARIABLE, dev_data
from dipr.core.detection import BOX_SOURCES, DEFAULT_MIN_PERSON_SCORE
from dipr.extras import RUNTIME, missing_extras
from dipr.models.registry import DEFAULT_DETECTOR_ONNX, DEFAULT_ONNX

if TYPE_CHECKING:
    from dipr.core.coco import KeypointSet
    from dipr.evaluation.coco_eval import Row


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help=__doc__, description=__doc__)
    models = parser.add_mutually_exclusive_group()
    models.add_argument(
        "--model",
        type=Path,
        action="append",
        dest="models",
        help=f"ONNX model; repeat for several (default: {DEFAULT_ONNX.name})",
    )
    models.add_argument(
        "--sweep",
        action="store_true",
        help="export and evaluate every beta x region variant (needs torch)",
    )
    models.add_argument(
        "--variants",
        action="store_true",
        help="export and evaluate the default model in fp32, int8, with the flip test, and "
        "int8 with the flip test, in one table (needs torch)",
    )
    parser.add_argument(
        "--detector",
        nargs="?",
        type=Path,
        const=DEFAULT_DETECTOR_ONNX,
        default=None,
        metavar="ONNX",
        help="evaluate without ground-truth boxes, as the service runs: the detector's own "
        "keypoints, the pose model on its boxes, and on the ground-truth ones "
        f"(default detector: {DEFAULT_DETECTOR_ONNX.name})",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=DEFAULT_MIN_PERSON_SCORE,
        help=f"with --detector: its threshold (default {DEFAULT_MIN_PERSON_SCORE})",
    )
    parser.add_argument(
        "--detector-box",
        choices=BOX_SOURCES,
        default="box",
        help="with --detector: what a detected person is cropped by (default box)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"COCO-format folder (default: ${DEV_DATA_VARIABLE}, else ../shared/data/coco_dev)",
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        help="COCO keypoint annotations (default: <data>/test_coco.json)",
    )
    parser.add_argument("--images", type=Path, help="image folder (default: <data>)")
    parser.add_argument("--json", type=Path, help="also write the table as JSON here")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--verbose", action="store_true", help="show pycocotools' output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so that other subcommands never load pycocotools (and --sweep alone, torch).
    from dipr.core.coco import load_keypoint_set
    from dipr.core.errors import DiprError
    from dipr.evaluation import coco_eval

    if args.batch_size < 1:
        return _fail("--batch-size must be at least 1")
    problem = missing_extras({**RUNTIME, "pycocotools": "eval"})
    if problem is not None:
        return _fail(problem)
    data: Path = args.data or dev_data()
    annotations: Path = args.annotations or data / "test_coco.json"
    images: Path = args.images or data
    if args.data is None and args.annotations is None and not annotations.is_file():
        return _fail(no_data(annotations))
    if args.detector is not None:
        if args.sweep or args.variants or (args.models and len(args.models) > 1):
            return _fail("--detector takes one pose --model, not --sweep or --variants")
        if not 0 <= args.min_score <= 1:
            return _fail("--min-score must be between 0 and 1")
        return _detection(args, annotations, images)
    try:
        dataset = load_keypoint_set(annotations, images)
        if args.sweep:
            rows = coco_eval.sweep(dataset, args.batch_size, args.verbose, _progress())
        elif args.variants:
            rows = _variant_rows(dataset, args, data)
        else:
            rows = [
                row
                for model in args.models or [DEFAULT_ONNX]
                for row in coco_eval.evaluate_model(
                    model, dataset, None, args.batch_size, args.verbose
                )
            ]
    except DiprError as error:
        return _fail(str(error))
    print(
        f"{len(dataset.persons)} persons from {annotations}; "
        f"mean OKS over persons with >= {coco_eval.MIN_OKS_KEYPOINTS} labelled keypoints\n"
    )
    print(coco_eval.markdown_table(rows))
    if args.json:
        coco_eval.write_json(rows, args.json)
    return 0


def _variant_rows(dataset: KeypointSet, args: argparse.Namespace, data: Path) -> list[Row]:
    """The default model's four variants (the int8 ones gated on this same set), the debiased
    keypoints of each (what the service answers with)."""
    import tempfile

    from dipr.evaluation import coco_eval

    try:
        from dipr.export.variants import export_variants
    except ImportError as error:
        raise coco_eval.EvaluationError(
            f"--variants exports models and needs the `export` extra: {error}"
        ) from error
    report = _progress()
    with tempfile.TemporaryDirectory(prefix="dipr-variants-") as folder:
        with _eval_data_for_export(data):
            variants = export_variants(Path(folder), report)
        rows = []
        for name, path in variants.models.items():
            for row in coco_eval.evaluate_model(
                path, dataset, ("debiased",), args.batch_size, args.verbose
            ):
                rows.append(replace(row, model=f"{name}: {row.model}", path=""))
    for name, reason in variants.refused.items():
        print(f"{name}: not evaluated: {reason}", file=sys.stderr)
    return rows


@contextlib.contextmanager
def _eval_data_for_export(data: Path) -> Iterator[None]:
    """The int8 exports gate on the set evaluated here (they read DIPR_DEV_DATA)."""
    previous = os.environ.get(DEV_DATA_VARIABLE)
    os.environ[DEV_DATA_VARIABLE] = str(data)
    try:
        yield
    finally:
        if previous is None:
            del os.environ[DEV_DATA_VARIABLE]
        else:
            os.environ[DEV_DATA_VARIABLE] = previous


def _detection(args: argparse.Namespace, annotations: Path, images: Path) -> int:
    from dipr.core.coco import load_keypoint_set
    from dipr.core.errors import DiprError
    from dipr.evaluation import detection_eval

    try:
        dataset = load_keypoint_set(annotations, images)
        rows = detection_eval.evaluate_detection(
            dataset,
            args.detector,
            (args.models or [DEFAULT_ONNX])[0],
            args.min_score,
            args.detector_box,
            verbose=args.verbose,
        )
    except DiprError as error:
        return _fail(str(error))
    print(
        f"{len(dataset.image_paths)} images from {annotations}; detector {args.detector.name} at "
        f"score >= {args.min_score}, crops by its {args.detector_box}; matched OKS: per labelled "
        f"person (>= {detection_eval.MIN_OKS_KEYPOINTS} keypoints) the best OKS among those "
        f"returned\n"
    )
    print(detection_eval.markdown_table(rows))
    if args.json:
        detection_eval.write_json(rows, args.json)
    return 0


def no_data(annotations: Path) -> str:
    """The default data set is missing: what it is, and how to evaluate on other data. The user
    never chose that path, so an error naming only the path would not say what to do."""
    if os.environ.get(DEV_DATA_VARIABLE):
        where = f"${DEV_DATA_VARIABLE} is {annotations.parent}, which has no {annotations.name}"
    else:
        where = (
            f"no {annotations.name} in {annotations.parent} (the default: the dev set in "
            f"shared/data/coco_dev beside the checkout)"
        )
    return (
        f"no evaluation data: {where}; give a COCO-format person keypoint set: --data DIR "
        f"(DIR/{annotations.name}, images in DIR), --annotations FILE --images DIR, "
        f"or {DEV_DATA_VARIABLE}=DIR"
    )


def _progress() -> Callable[[str], None]:
    start = time.monotonic()

    def report(model: str) -> None:
        print(f"[{time.monotonic() - start:5.0f} s] evaluated {model}", file=sys.stderr)

    return report


def _fail(message: str) -> int:
    print(f"dipr eval: error: {message}", file=sys.stderr)
    return 1
