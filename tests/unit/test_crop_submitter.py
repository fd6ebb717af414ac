"""Both kinds of object the pose and detect stages are given (a Batcher in one process, a
RemoteBatcher in a front-end process) are CropSubmitters, with the protocol's `submit`."""

import inspect
import time

import numpy as np
import pytest

from dipr.service.batcher import Batcher
from dipr.service.crop_submitter import CropSubmitter
from dipr.service.remote_inference import RemoteBatcher


@pytest.mark.parametrize("submitter", [Batcher, RemoteBatcher])
def test_each_submitter_has_the_protocols_submit(submitter: type[CropSubmitter]) -> None:
    assert CropSubmitter in submitter.__mro__  # declared, not only alike
    assert inspect.iscoroutinefunction(submitter.submit)
    protocol = inspect.signature(CropSubmitter.submit)
    assert inspect.signature(submitter.submit) == protocol


async def test_a_batcher_answers_through_the_protocol() -> None:
    def double(batch: np.ndarray) -> dict[str, np.ndarray]:
        return {"doubled": batch.reshape(len(batch), -1)[:, :1] * 2}

    batcher = Batcher(double, max_batch_size=4, max_queue=8)
    batcher.start()
    submitter: CropSubmitter = batcher
    try:
        crops = np.arange(3, dtype=np.uint8).reshape(3, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
        outputs = await submitter.submit(crops, time.monotonic() + 5)
        assert outputs["doubled"].ravel().tolist() == [0, 2, 4]
        assert await submitter.submit(crops[:0], time.monotonic() + 5) == {}
    finally:
        batcher.stop()
