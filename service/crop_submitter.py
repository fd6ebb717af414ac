"""What the pose and detect stages need of a model: a request's crops in, one row of every output
per crop back, by the request's deadline.

Two kinds of object do it: a `Batcher` (the models in this process) and a `RemoteBatcher` (the
models in the inference process of the front-end layout, fed through shared memory). The stages
are written against this protocol, so that neither layout is special to them.
"""

from typing import Protocol

import numpy as np


class CropSubmitter(Protocol):
    async def submit(self, crops: np.ndarray, deadline: float) -> dict[str, np.ndarray]:
        """Run `crops` [n, H, W, 3] (uint8, the model's input size) by `deadline`
        (time.monotonic()); each output with n rows, in crop order ({} for no crops). Raises the
        service's errors: Overloaded (queue full), DeadlineExceeded, InferenceFailed, NotReady."""
        ...
