"""The int8 export's accuracy gate: the fp32 and int8 models' mean OKS side by side on a
COCO-format keypoint set (persons cropped from their ground-truth boxes, as `dipr eval` does),
and the refusal of an int8 model that loses more than a set amount."""

from dataclasses import dataclass
from pathlib import Path

from dipr.core.coco import KeypointSet
from dipr.core.errors import DiprError
from dipr.evaluation.coco_eval import mean_oks, open_model, predict

DEFAULT_MAX_OKS_DROP = 0.01
GATED_METHOD = "debiased"  # the `keypoints` output: what the service answers with


class AccuracyGateError(DiprError):
    """The int8 model loses more accuracy than allowed."""


@dataclass(frozen=True)
class OksComparison:
    fp32: float
    int8: float
    persons: int  # persons in the mean (enough labelled keypoints)
    data: str  # the set's annotation file

    @property
    def drop(self) -> float:
        return self.fp32 - self.int8

    def summary(self) -> str:
        return (
            f"mean OKS on {self.persons} persons of {self.data}: fp32 {self.fp32:.4f}, "
            f"int8 {self.int8:.4f} (drop {self.drop:+.4f})"
        )

    def as_metadata(self) -> str:
        """The ACCURACY_GATE metadata value."""
        return (
            f"mean OKS {self.fp32:.4f} -> {self.int8:.4f} on {self.persons} persons of {self.data}"
        )


def compare(fp32: Path, int8: Path, dataset: KeypointSet, data: str) -> OksComparison:
    means = []
    for path in (fp32, int8):
        session, model = open_model(path)
        keypoints = predict(session, model, dataset).keypoints[GATED_METHOD]
        means.append(mean_oks(dataset.persons, keypoints))
    (fp32_oks, persons), (int8_oks, _) = means
    return OksComparison(fp32=fp32_oks, int8=int8_oks, persons=persons, data=data)


def check(comparison: OksComparison, max_drop: float) -> None:
    """AccuracyGateError when int8 loses more than `max_drop` mean OKS (a NaN fails too)."""
    if not comparison.drop <= max_drop:
        raise AccuracyGateError(
            f"int8 loses {comparison.drop:.4f} mean OKS (fp32 {comparison.fp32:.4f}, int8 "
            f"{comparison.int8:.4f}; --max-oks-drop {max_drop}): calibrate on photos like those "
            f"served (--calibration DIR) or keep fp32"
        )
