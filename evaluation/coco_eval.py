"""COCO keypoint evaluation of an exported ONNX pose model, run with onnxruntime on the CPU.

It measures what is served: the ONNX file, not the PyTorch module it came from. Every person of
the set (`dipr.core.coco`) is cropped from its ground-truth box (padding 1.25) with the service's
own preparation (`dipr.core.prepare`), the crops go through the model in batches, and the three
keypoint outputs come back to image pixels through each crop's inverse affine. Three methods, side
by side:

- official: MoveNet's published decode (`keypoints_official`);
- raw: the uncorrected soft-argmax (`keypoints_raw`);
- debiased: the closed-form correction (`keypoints`).

All three use the `scores` output. Metrics per method: COCO keypoint AP / AP50 / AP75
(pycocotools, one prediction per ground-truth person, detection score = mean keypoint score),
mean OKS per person against its own ground truth, and mean pixel error over labelled keypoints
(`Accuracy`).

Coordinates: the model and the crops use pixel *index* coordinates (centre of the first pixel = 0);
COCO uses continuous ones (pixel edges at integers, centre of the first pixel = 0.5): predictions
go through `dipr.core.coco.to_coco` before they meet COCO ground truth.
"""

import contextlib
import io
import itertools
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from dipr.core import pose_contract
from dipr.core.coco import PERSON_CATEGORY, KeypointSet, LabelledPerson, to_coco
from dipr.core.crops import PADDING, Crop
from dipr.core.errors import DiprError
from dipr.core.pose_contract import ModelInfo, Session, describe
from dipr.core.prepare import prepare_image
from dipr.models.regions import Region

# COCO's per-keypoint OKS sigmas (pycocotools' COCOeval.Params.kpt_oks_sigmas), in COCO order.
COCO_SIGMAS = np.array([26, 25, 25, 35, 35, 79, 79, 72, 72, 62, 62, 107, 107, 87, 87, 89, 89]) / 1e3
MIN_OKS_KEYPOINTS = 5  # mean OKS only over persons with this many labelled keypoints
T = TypeVar("T")
Described = TypeVar("Described")

# Method name → the ONNX output holding its keypoints.
METHODS: dict[str, str] = {
    "official": pose_contract.KEYPOINTS_OFFICIAL,
    "raw": pose_contract.KEYPOINTS_RAW,
    "debiased": pose_contract.KEYPOINTS,
}

# The --sweep grid: (region, window) pairs x betas. Window is ignored for "global".
SWEEP_BETAS: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0, 50.0)
SWEEP_REGIONS: tuple[tuple[Region, int], ...] = (
    ("global", 0),
    ("window", 7),
    ("window", 11),
    ("person", 7),
    ("person", 11),
    ("person", 21),
)
# The variant (one of the grid) whose `scores` rank the official decode's one row: the default.
OFFICIAL_FROM: tuple[float, Region, int] = (10.0, "person", 11)


class EvaluationError(DiprError):
    """A problem with the inputs (data, images, model) that the user must fix."""


@dataclass(frozen=True)
class Predictions:
    """Per person, in `KeypointSet.persons` order: keypoints per method in COCO coordinates."""

    keypoints: dict[str, np.ndarray]  # method → [P, 17, 2]
    scores: np.ndarray  # [P, 17]


@dataclass(frozen=True)
class Accuracy:
    mean_oks: float
    ap: float
    ap50: float
    ap75: float
    mean_px_error: float
    oks_persons: int  # persons in mean OKS (≥ MIN_OKS_KEYPOINTS labelled)


@dataclass(frozen=True)
class Row:
    """One line of the results table: a model x method."""

    model: str  # description
    path: str
    method: str
    accuracy: Accuracy

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "path": self.path,
            "method": self.method,
            **asdict(self.accuracy),
        }


# --- model ---------------------------------------------------------------------------------------


def open_model(
    path: Path, reader: Callable[[Session], Described] = describe, what: str = "model"
) -> tuple[ort.InferenceSession, Described]:
    """A CPU session and what its contract's reader (the pose model's by default) says the model
    is; EvaluationError for a missing, unreadable or contract-breaking file."""
    if not path.is_file():
        raise EvaluationError(f"{what} not found: {path}")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own pybind types for unreadable files
        raise EvaluationError(f"cannot load {path} with onnxruntime: {error}") from error
    try:
        return session, reader(session)
    except DiprError as error:
        raise EvaluationError(f"{path} does not follow the dipr ONNX contract: {error}") from error


def methods_of(model: ModelInfo) -> tuple[str, ...]:
    """The methods a model's outputs allow (keypoints_official is optional in the contract:
    without it, (a) cannot be evaluated)."""
    return tuple(method for method, output in METHODS.items() if output in model.outputs)


def predict(
    session: ort.InferenceSession, model: ModelInfo, dataset: KeypointSet, batch_size: int = 16
) -> Predictions:
    """Crop every person, run the crops through ORT in batches, map keypoints back to COCO."""
    methods = methods_of(model)
    names = [METHODS[m] for m in methods] + [pose_contract.SCORES]
    crops: list[Crop] = []
    chunks: list[list[np.ndarray]] = []
    # Streamed batch by batch, so that a full COCO split never sits in memory as crops.
    for batch in _batches(person_crops(dataset, model.input_size), batch_size):
        crops += [crop for crop, _ in batch]
        inputs = np.stack([pixels for _, pixels in batch])
        chunks.append(session.run(names, {pose_contract.INPUT: inputs}))
    outputs = {name: np.concatenate([c[j] for c in chunks]) for j, name in enumerate(names)}
    keypoints = {m: _to_coco(outputs[METHODS[m]], crops) for m in methods}
    return Predictions(keypoints=keypoints, scores=outputs[pose_contract.SCORES].astype(np.float64))


def person_crops(
    dataset: KeypointSet, input_size: tuple[int, int]
) -> Iterator[tuple[Crop, np.ndarray]]:
    """One crop and its network input per person, in order, prepared exactly as the service
    prepares an image with these boxes (persons are grouped by image: each is decoded once)."""
    for image_id, group in itertools.groupby(dataset.persons, key=lambda p: p.image_id):
        persons = list(group)
        path = dataset.image_paths[image_id]
        try:
            prepared = prepare_image(
                path.read_bytes(),
                None,
                [p.box for p in persons],
                input_size,
                padding=PADDING,
                max_pixels=2**40,
            )
        except DiprError as error:
            raise EvaluationError(f"{path}: {error.message}") from error
        yield from zip(prepared.cropped.crops, prepared.cropped.inputs, strict=True)


def _batches(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _to_coco(points: np.ndarray, crops: Sequence[Crop]) -> np.ndarray:
    """[P, K, 2] input pixels → image pixels (inverse affine) → COCO continuous coordinates."""
    image = np.stack(
        [crop.to_image(p.astype(np.float64)) for p, crop in zip(points, crops, strict=True)]
    )
    return to_coco(image)


# --- metrics -------------------------------------------------------------------------------------


def oks(predicted: np.ndarray, ground_truth: np.ndarray, area: float) -> float:
    """Object keypoint similarity as COCOeval computes it, over the labelled keypoints.

    predicted [K, 2] and ground_truth [K, 3] (x, y, v) in the same (COCO) coordinates.
    """
    labelled = ground_truth[:, 2] > 0
    if not labelled.any():
        return float("nan")
    squared = ((predicted - ground_truth[:, :2]) ** 2).sum(axis=1)
    # COCOeval: e = d² / (2 sigma)² / (area + eps) / 2, with sigma per keypoint.
    e = squared / (2 * COCO_SIGMAS) ** 2 / (area + np.spacing(1)) / 2
    return float(np.exp(-e)[labelled].mean())


def mean_oks(persons: Sequence[LabelledPerson], keypoints: np.ndarray) -> tuple[float, int]:
    """Mean OKS over persons with ≥ MIN_OKS_KEYPOINTS labelled keypoints, and their count."""
    values = [
        oks(k, p.keypoints, p.area)
        for p, k in zip(persons, keypoints, strict=True)
        if p.labelled.sum() >= MIN_OKS_KEYPOINTS
    ]
    return (float(np.mean(values)) if values else float("nan")), len(values)


def mean_pixel_error(persons: Sequence[LabelledPerson], keypoints: np.ndarray) -> float:
    """Mean Euclidean distance to ground truth over every labelled keypoint, image pixels."""
    distances = [
        np.linalg.norm(k - p.keypoints[:, :2], axis=1)[p.labelled]
        for p, k in zip(persons, keypoints, strict=True)
    ]
    return float(np.concatenate(distances).mean())


def coco_ap(
    dataset: KeypointSet, keypoints: np.ndarray, scores: np.ndarray, verbose: bool = False
) -> tuple[float, float, float]:
    """pycocotools keypoint AP, AP50, AP75 with one prediction per ground-truth person, scored by
    its mean keypoint score (ranks confident poses first, as a detector would; a constant would
    leave COCOeval's ranking, and so AP, to list order)."""
    results = [
        result_entry(p.image_id, k, float(s.mean()))
        for p, k, s in zip(dataset.persons, keypoints, scores, strict=True)
    ]
    return coco_keypoint_ap(dataset.coco, results, verbose)


def coco_keypoint_ap(
    coco: dict[str, Any], results: list[dict[str, Any]], verbose: bool = False
) -> tuple[float, float, float]:
    """pycocotools keypoint AP, AP50, AP75 of `results` (`result_entry`) against the set."""
    try:  # the `eval` extra; only this function needs it
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise EvaluationError(f"COCO AP needs pycocotools (the `eval` extra): {error}") from error

    if not results:
        return 0.0, 0.0, 0.0  # nothing returned: nothing found (pycocotools refuses an empty list)
    with _quiet(not verbose):
        ground_truth = COCO()
        ground_truth.dataset = coco
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), iouType="keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    ap, ap50, ap75 = (float(v) for v in evaluation.stats[:3])
    return ap, ap50, ap75


def result_entry(image_id: int, keypoints: np.ndarray, score: float) -> dict[str, Any]:
    """One returned person as pycocotools reads it: keypoints [K, 2] in COCO coordinates."""
    triplets = np.concatenate([keypoints, np.ones((len(keypoints), 1))], axis=1)
    return {
        "image_id": image_id,
        "category_id": PERSON_CATEGORY,
        "keypoints": [float(v) for v in triplets.ravel()],
        "score": score,
    }


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Swallow pycocotools' prints (it writes progress and summaries to stdout)."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def _quiet_export(enabled: bool) -> Iterator[None]:
    """The dynamo exporter prints progress, logs torchvision warnings and FutureWarnings."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with _quiet(True), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def accuracy(
    dataset: KeypointSet, keypoints: np.ndarray, scores: np.ndarray, verbose: bool = False
) -> Accuracy:
    ap, ap50, ap75 = coco_ap(dataset, keypoints, scores, verbose)
    mean, count = mean_oks(dataset.persons, keypoints)
    return Accuracy(
        mean_oks=mean,
        ap=ap,
        ap50=ap50,
        ap75=ap75,
        mean_px_error=mean_pixel_error(dataset.persons, keypoints),
        oks_persons=count,
    )


# --- models, sweep, table ------------------------------------------------------------------------


def evaluate_model(
    path: Path,
    dataset: KeypointSet,
    methods: Sequence[str] | None = None,
    batch_size: int = 16,
    verbose: bool = False,
) -> list[Row]:
    """One row per method (all the model offers, or those of `methods` it offers)."""
    session, model = open_model(path)
    predictions = predict(session, model, dataset, batch_size)
    chosen = [m for m in methods_of(model) if methods is None or m in methods]
    return [
        Row(
            model=model.description,
            path=str(path),
            method=m,
            accuracy=accuracy(dataset, predictions.keypoints[m], predictions.scores, verbose),
        )
        for m in chosen
    ]


def sweep(
    dataset: KeypointSet,
    batch_size: int = 16,
    verbose: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Export every (β, region) of the grid to a temporary ONNX and evaluate it.

    The official decode's keypoints do not depend on β or the region, so it gets one row, taken
    from the committed default's configuration (OFFICIAL_FROM): its AP does depend on the
    variant a little, because `scores` is zeroed where a variant's debiasing was ill-conditioned.
    """
    export_variant = _exporter(verbose)  # torch is imported only here
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dipr-sweep-") as folder:
        for region, window in SWEEP_REGIONS:
            for beta in SWEEP_BETAS:
                path = Path(folder) / f"{region}-{window}-{beta:g}.onnx"
                export_variant(beta, region, window, path)
                official = (beta, region, window) == OFFICIAL_FROM
                methods = tuple(METHODS) if official else ("raw", "debiased")
                new = evaluate_model(path, dataset, methods, batch_size, verbose)
                rows += [_any_variant(r) if r.method == "official" else r for r in new]
                path.unlink()  # 25 MB each: keep the temp dir small
                if progress:
                    progress(new[-1].model)
    # The official row first: it is the baseline the others are read against.
    return sorted(rows, key=lambda r: r.method != "official")


def _any_variant(row: Row) -> Row:
    name, _, variant = row.model.partition(" ")
    return replace(row, model=f"{name} (any β/region; scores of {variant})", path="")


def _exporter(verbose: bool) -> Callable[[float, Region, int, Path], None]:
    try:
        from dipr.export.onnx_export import ExportOptions, build_pose_model, export_onnx
    except ImportError as error:
        raise EvaluationError(
            f"--sweep exports models and needs the `export` extra "
            f"(torch, onnx, onnxscript): {error}"
        ) from error

    def export(beta: float, region: Region, window: int, path: Path) -> None:
        # A global region has no window; ExportOptions wants an int all the same.
        options = ExportOptions(beta=beta, region=region, window=window or 11)
        with _quiet_export(not verbose):
            export_onnx(*build_pose_model(options), path)

    return export


COLUMNS = ("model", "method", "mean OKS", "AP", "AP50", "AP75", "mean px error")


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(COLUMNS) - 2)) + "|",
    ]
    for row in rows:
        m = row.accuracy
        cells = [
            row.model,
            row.method,
            f"{m.mean_oks:.3f}",
            f"{m.ap:.3f}",
            f"{m.ap50:.3f}",
            f"{m.ap75:.3f}",
            f"{m.mean_px_error:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(rows: Sequence[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.as_json() for r in rows], indent=2) + "\n")
