"""Settings that LocalInference hands to each model's OnnxBackend: the committed models, loaded and
warmed up on the CPU as the service does."""

import logging

import pytest

from dipr.service.inference import LocalInference
from dipr.service.metrics import ServiceMetrics
from dipr.service.settings import Settings

# Small batches: warm-up runs batch sizes 1 and 2 only.
SMALL = {"max_batch_size": 2, "max_queue": 16, "max_boxes": 8, "max_images": 4}
NOT_ON_CPU = "CUDA graphs are for the CUDA provider: not used on CPUExecutionProvider"


def loaded(caplog: pytest.LogCaptureFixture, **settings: object) -> tuple[LocalInference, int]:
    """LocalInference loaded with `settings`, and how many backends said they ignore CUDA graphs."""
    inference = LocalInference(
        Settings(provider="cpu", detector_max_batch_size=2, **SMALL, **settings), ServiceMetrics()
    )
    with caplog.at_level(logging.WARNING, logger="dipr.service.backend"):
        inference.load()
    inference.stop()
    assert inference.not_ready is None
    return inference, sum(NOT_ON_CPU in record.getMessage() for record in caplog.records)


def test_dipr_cuda_graphs_reaches_both_models_backends(caplog: pytest.LogCaptureFixture) -> None:
    # On the CPU the backend ignores the setting, saying so: one warning per model proves that
    # each OnnxBackend was given it (CUDA graphs themselves need a GPU: make gpu-check).
    inference, warnings = loaded(caplog, cuda_graphs=True, detect=True)
    assert inference.detector is not None
    assert warnings == 2


def test_cuda_graphs_are_off_unless_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    _, warnings = loaded(caplog, detect=True)
    assert warnings == 0


def test_without_the_detector_only_the_pose_backend_gets_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inference, warnings = loaded(caplog, cuda_graphs=True, detect=False)
    assert inference.detector is None
    assert warnings == 1
