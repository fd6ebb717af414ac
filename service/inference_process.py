"""The inference process of the front-end layout (DIPR_FRONTEND_PROCESSES > 0): it alone holds the
models (one ONNX Runtime session each, once in GPU memory) and their batchers, and batches the
crops of every front-end process together.

Each front-end that connects to its Unix socket gets a shared-memory slab per model
(`crop_slab`), writes a request's crops there and sends their slots (`inference_protocol`); the
crops go to the batcher as a view of the slab, exactly as a request's own crops do in the
one-process layout, with the request's deadline: crops of a request that is cancelled (the
front-end's client left or its deadline passed) or late are skipped. The result, a few small
arrays, goes back on the socket.

Run by `dipr serve` (`python -m dipr.service.inference_process --socket PATH`), with the same
DIPR_* settings as the front-ends.
"""

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import logging.config
import math
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dipr.service.batcher import Batcher
from dipr.service.crop_slab import CropSlab, shared_memory_free
from dipr.service.inference import LocalInference
from dipr.service.inference_protocol import (
    ATTACHED,
    CANCEL,
    CONTROL,
    DETECTOR,
    ERROR,
    HELLO,
    MODEL_NAMES,
    POSE,
    RESULT,
    STATUS,
    SUBMIT,
    encode_arrays,
    encode_error,
    info_fields,
    json_payload,
    reply,
)
from dipr.service.metrics import ServiceMetrics
from dipr.service.settings import Settings

log = logging.getLogger("dipr.service")
STATUS_PERIOD_S = 0.1  # how often readiness is compared with what the front-ends were told


def slab_slots(settings: Settings) -> dict[int, int]:
    """Crop slots per front-end and model: a share of the model's queue, and never fewer than
    one request's boxes or images (a request with more crops, persons found by the detector, is
    sent in parts)."""
    share = max(1, settings.frontend_processes)
    pose = max(settings.max_boxes, settings.max_images, math.ceil(settings.max_queue / share))
    slots = {POSE: pose}
    if settings.detect:
        slots[DETECTOR] = max(settings.max_images, math.ceil(settings.detector_max_queue / share))
    return slots


class FrontendConnection:
    """One connected front-end process: its slabs, and its requests in flight by id."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.slabs: dict[int, CropSlab] = {}
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.told_readiness: str | None = None

    def send(self, message: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(message)


class InferenceServer:
    def __init__(self, settings: Settings, socket_path: Path) -> None:
        self.settings = settings
        self.socket_path = socket_path
        self.metrics = ServiceMetrics()
        self.inference = LocalInference(settings, self.metrics)
        self._connections: set[FrontendConnection] = set()
        self._unreleased: list[CropSlab] = []  # unmapped once no batch reads them any more
        self._stopping = asyncio.Event()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        # Front-ends connect once the models are loaded (or have failed, which they are told).
        await asyncio.to_thread(self.inference.load)
        self.socket_path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._connected, str(self.socket_path))
        log.info("inference process ready for front-ends on %s", self.socket_path)
        status = asyncio.create_task(self._tell_readiness())
        await self._stopping.wait()
        log.info("inference process stopping")
        server.close()
        self.socket_path.unlink(missing_ok=True)
        # The front-ends were stopped first (they drain through us): what is still running is
        # finished within the grace period, then the batchers end.
        running = [task for c in self._connections for task in c.tasks.values()]
        if running:
            await asyncio.wait(running, timeout=self.settings.shutdown_grace_s)
        status.cancel()
        await asyncio.to_thread(self.inference.stop)
        for connection in list(self._connections):
            connection.writer.close()
        self._release_slabs()

    def _hello(self, connection: FrontendConnection) -> dict[str, Any]:
        inference = self.inference
        not_ready = inference.readiness()
        greeting: dict[str, Any] = {"ready": not_ready, "provider": inference.provider}
        if inference.pose_info is None:  # the models did not load: the front-end says why
            return greeting
        shapes = {POSE: inference.pose_info.input_size}
        if inference.detector_info is not None:
            shapes[DETECTOR] = inference.detector_info.input_size
        slots = slab_slots(self.settings)
        needed = sum(CropSlab.size(slots[m], (h, w, 3)) for m, (w, h) in shapes.items())
        free = shared_memory_free()
        if free is not None and needed > free:
            greeting["ready"] = (
                f"not enough shared memory for a front-end's crops: {needed >> 20} MiB needed, "
                f"{free >> 20} MiB free in /dev/shm (give the container more, e.g. docker "
                "--shm-size, or lower DIPR_MAX_QUEUE or DIPR_FRONTEND_PROCESSES)"
            )
            return greeting
        for model, (width, height) in shapes.items():
            connection.slabs[model] = CropSlab.create(slots[model], (height, width, 3))
        greeting["pose"] = self._model(connection, POSE, info_fields(inference.pose_info))
        if inference.detector_info is not None:
            fields = info_fields(inference.detector_info)
            greeting["detector"] = self._model(connection, DETECTOR, fields)
        connection.told_readiness = not_ready
        return greeting

    @staticmethod
    def _model(connection: FrontendConnection, model: int, info: dict[str, Any]) -> dict[str, Any]:
        slab = connection.slabs[model]
        return {"info": info, "slab": slab.name, "slots": slab.slots, "shape": list(slab.shape)}

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = FrontendConnection(writer)
        self._connections.add(connection)
        try:
            connection.send(reply(HELLO, 0, json_payload(self._hello(connection))))
            while True:
                message = await reader.readexactly(CONTROL.size)
                kind, model, request, first, count, deadline = CONTROL.unpack(message)
                if kind == SUBMIT:
                    self._submit(connection, model, request, first, count, deadline)
                elif kind == CANCEL:
                    task = connection.tasks.get(request)
                    if task is not None:
                        task.cancel()
                elif kind == ATTACHED:
                    for slab in connection.slabs.values():
                        slab.unlink()  # both sides have it mapped: no name left to leak
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the front-end is gone
        finally:
            self._connections.discard(connection)
            for task in connection.tasks.values():
                task.cancel()
            if connection.tasks:
                await asyncio.wait(list(connection.tasks.values()))
            writer.close()
            for slab in connection.slabs.values():
                slab.unlink()
                self._unreleased.append(slab)
            self._release_slabs()

    def _submit(
        self,
        connection: FrontendConnection,
        model: int,
        request: int,
        first: int,
        count: int,
        deadline: float,
    ) -> None:
        batcher = self.inference.pose if model == POSE else self.inference.detector
        slab = connection.slabs.get(model)
        crops = slab.crops if slab is not None else None
        if batcher is None or crops is None or count < 1 or first + count > slab.slots:
            problem = ValueError(f"no {MODEL_NAMES.get(model, model)} slots {first}+{count} here")
            connection.send(reply(ERROR, request, encode_error(problem)))
            return
        task = asyncio.create_task(
            self._infer(connection, request, batcher, crops[first : first + count], deadline)
        )
        connection.tasks[request] = task

    async def _infer(
        self,
        connection: FrontendConnection,
        request: int,
        batcher: Batcher,
        crops: np.ndarray,
        deadline: float,
    ) -> None:
        # Whatever happens, the front-end gets one answer per request: only then does it reuse
        # the request's slots.
        try:
            outputs = await batcher.submit(crops, deadline)
            connection.send(reply(RESULT, request, encode_arrays(outputs)))
        except asyncio.CancelledError:
            cancelled = {"type": "Cancelled", "message": "cancelled", "cause": None}
            connection.send(reply(ERROR, request, json_payload(cancelled)))
        except Exception as error:
            connection.send(reply(ERROR, request, encode_error(error)))
        finally:
            connection.tasks.pop(request, None)

    async def _tell_readiness(self) -> None:
        """Front-ends go unready when we do (failing batches, shutting down) and back."""
        while True:
            await asyncio.sleep(STATUS_PERIOD_S)
            now = self.inference.readiness()
            for connection in list(self._connections):
                if connection.told_readiness != now:
                    connection.told_readiness = now
                    connection.send(reply(STATUS, 0, json_payload({"ready": now})))
            self._release_slabs()

    def _release_slabs(self) -> None:
        self._unreleased = [slab for slab in self._unreleased if not slab.release()]


def _die_with_parent() -> None:
    """Linux: SIGTERM when `dipr serve` ends, even killed: no orphan holding the GPU."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(libc_name).prctl(pr_set_pdeathsig, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    from dipr.service.logs import logging_config
    from dipr.service.memory import limit_malloc_arenas

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    _die_with_parent()
    limit_malloc_arenas()
    settings = Settings()
    logging.config.dictConfig(logging_config(settings.log_format, args.log_level))
    asyncio.run(InferenceServer(settings, args.socket).serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
