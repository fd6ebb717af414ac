"""A front-end process's side of the inference process (DIPR_FRONTEND_PROCESSES > 0): a batcher
look-alike per model (`submit(crops, deadline)`, what the pose and detect stages call) whose
crops go through shared memory to the inference process's batchers.

A thread holds the connection: it reads the answers and hands them to the event loop that waits
for them, and when the inference process goes away it fails every request in flight at once
(503, not ready, saying so) and connects again until it is back. Slots are written and given
back on the event loop only; a request's slots are reused only once the inference process has
answered it (result, error or "cancelled"), so a batch never reads crops being overwritten.
"""

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dipr.core.detector_contract import DetectorInfo
from dipr.core.errors import DeadlineExceeded, DiprError, NotReady, Overloaded
from dipr.core.pose_contract import ModelInfo
from dipr.service.crop_slab import CropSlab, SlotRuns
from dipr.service.crop_submitter import CropSubmitter
from dipr.service.inference_protocol import (
    ATTACHED,
    CANCEL,
    DETECTOR,
    ERROR,
    HELLO,
    MAX_REPLY_BYTES,
    MODEL_NAMES,
    POSE,
    REPLY_HEADER,
    RESULT,
    STATUS,
    SUBMIT,
    control,
    decode_arrays,
    decode_error,
    detector_info_from,
    model_info_from,
)

log = logging.getLogger("dipr.service")
RECONNECT_S = 0.2


@dataclass(eq=False)
class _Pending:
    future: asyncio.Future[dict[str, np.ndarray]]
    loop: asyncio.AbstractEventLoop
    model: int
    first: int
    count: int


@dataclass(eq=False)
class _Link:
    """One connection to the inference process, with the slabs it was given."""

    sock: socket.socket
    slabs: dict[int, CropSlab]
    runs: dict[int, SlotRuns]
    pending: dict[int, _Pending] = field(default_factory=dict)
    alive: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)  # pending and alive
    send_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: bytes) -> None:
        with self.send_lock:
            self.sock.sendall(message)


def _receive(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("the inference process closed the connection")
        chunks += chunk
    return bytes(chunks)


def _read_reply(sock: socket.socket) -> tuple[int, int, bytes]:
    length, kind, request = REPLY_HEADER.unpack(_receive(sock, REPLY_HEADER.size))
    if length > MAX_REPLY_BYTES:
        raise ConnectionError(f"a reply of {length} bytes from the inference process")
    return kind, request, _receive(sock, length)


class RemoteInference:
    """The models of the inference process at `socket_path`, as this process sees them."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.pose_info: ModelInfo | None = None
        self.detector_info: DetectorInfo | None = None
        self.provider: str | None = None
        self.pose = RemoteBatcher(self, POSE)
        self.detector: RemoteBatcher | None = None
        self._link: _Link | None = None
        self._down = "waiting for the inference process"  # why, while there is no link
        self._remote_not_ready: str | None = None  # what the inference process says of itself
        self._greeted = threading.Event()
        self._stopping = threading.Event()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None  # the one that writes the slabs
        self._thread = threading.Thread(target=self._run, name="dipr-inference-link", daemon=True)

    def start(self, timeout: float | None = None) -> bool:
        """Connect (again and again, until stopped); True once the first greeting came within
        `timeout` (the inference process answers once its models are loaded)."""
        self._thread.start()
        return self._greeted.wait(timeout)

    def readiness(self) -> str | None:
        link = self._link
        if link is None or not link.alive:
            return self._down
        return self._remote_not_ready

    def stop(self) -> None:
        self._stopping.set()
        link = self._link
        if link is not None:
            link.sock.close()  # wakes the thread's recv
        self._thread.join(5)

    def slots(self, model: int) -> int:
        link = self._link
        runs = link.runs.get(model) if link is not None else None
        return runs.slots if runs is not None else 0

    async def infer(self, model: int, crops: np.ndarray, deadline: float) -> dict[str, np.ndarray]:
        """`crops` (at most `slots(model)`) through the model; as Batcher.submit."""
        loop = asyncio.get_running_loop()
        self._loop = loop  # before looking at the link: its slabs are unmapped on this loop
        link = self._link
        if link is None:
            raise NotReady(f"not ready: {self.readiness()}")
        with link.lock:
            alive = link.alive
        if not alive:
            raise NotReady(f"not ready: {self.readiness()}")
        name = MODEL_NAMES[model]
        runs, slab = link.runs[model], link.slabs[model]
        count = len(crops)
        first = runs.take(count)
        if first is None:
            raise Overloaded(
                f"the {name} queue is full ({runs.slots - runs.free} crops in flight from this "
                "front-end process)",
                cause=f"{name}_queue",
            )
        assert slab.crops is not None  # released only once the link is down
        # No await from the check above to here: the slab cannot be unmapped in between.
        slab.crops[first : first + count] = crops
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        request = next(self._ids)
        with link.lock:
            registered = link.alive
            if registered:
                link.pending[request] = _Pending(future, loop, model, first, count)
        if not registered:
            raise NotReady(f"not ready: {self.readiness()}")
        try:
            link.send(control(SUBMIT, request, model, first, count, deadline))
        except OSError:
            self._lost(link, "the inference process is gone")
            raise NotReady("not ready: the inference process is gone") from None
        expired = DeadlineExceeded("the request's deadline passed before inference finished")
        # The deadline as a timer on the future itself (asyncio.wait_for costs a task each).
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), _fail, future, expired)
        try:
            return await future
        finally:
            timer.cancel()
            # Given up here (cancelled, or its deadline passed): crops not yet run are skipped.
            if future.cancelled() or future.exception() is expired:
                with contextlib.suppress(OSError):
                    link.send(control(CANCEL, request))

    # --- the connection thread ---------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(self.socket_path))
            except OSError:
                sock.close()
                time.sleep(RECONNECT_S)
                continue
            link: _Link | None = None
            try:
                link = self._greet(sock)
                if link is not None:
                    self._link = link
                    log.info("connected to the inference process at %s", self.socket_path)
                    self._read(link)
            except (OSError, ValueError, ConnectionError) as error:
                if not self._stopping.is_set():
                    log.error("lost the inference process: %s", error)
                    self._down = "the inference process is gone; reconnecting"
            finally:
                sock.close()
                if link is not None:
                    self._lost(link, "the inference process is gone; reconnecting")
            time.sleep(RECONNECT_S)
        self._down = "shutting down"

    def _greet(self, sock: socket.socket) -> _Link | None:
        kind, _, payload = _read_reply(sock)
        if kind != HELLO:
            raise ConnectionError(f"the inference process greeted with message kind {kind}")
        greeting: dict[str, Any] = json.loads(payload)
        self._remote_not_ready = greeting.get("ready")
        self.provider = greeting.get("provider")
        pose = greeting.get("pose")
        if pose is None:  # no models there: unready with its reason, and try again later
            self._down = str(greeting.get("ready") or "the inference process has no model")
            self._greeted.set()
            self._stopping.wait(1.0)
            return None
        slabs = {POSE: self._attach(pose)}
        self.pose_info = model_info_from(pose["info"])
        detector = greeting.get("detector")
        if detector is not None:
            slabs[DETECTOR] = self._attach(detector)
            self.detector_info = detector_info_from(detector["info"])
            self.detector = self.detector or RemoteBatcher(self, DETECTOR)
        link = _Link(sock, slabs, {model: SlotRuns(slab.slots) for model, slab in slabs.items()})
        link.send(control(ATTACHED, 0))  # the names can go: both sides have them mapped
        self._greeted.set()
        return link

    @staticmethod
    def _attach(model: dict[str, Any]) -> CropSlab:
        return CropSlab.attach(str(model["slab"]), int(model["slots"]), tuple(model["shape"]))

    def _read(self, link: _Link) -> None:
        while True:
            kind, request, payload = _read_reply(link.sock)
            if kind == STATUS:
                self._remote_not_ready = json.loads(payload).get("ready")
                continue
            if kind not in (RESULT, ERROR):
                raise ConnectionError(f"unknown message kind {kind} from the inference process")
            with link.lock:
                pending = link.pending.pop(request, None)
            if pending is None:
                continue
            outcome: dict[str, np.ndarray] | DiprError = (
                decode_arrays(payload) if kind == RESULT else decode_error(payload)
            )
            pending.loop.call_soon_threadsafe(self._answered, link, pending, outcome)

    def _answered(
        self, link: _Link, pending: _Pending, outcome: dict[str, np.ndarray] | DiprError
    ) -> None:
        """On the event loop: the slots are free again, the request learns its outcome."""
        link.runs[pending.model].give_back(pending.first, pending.count)
        if pending.future.done():
            return
        if isinstance(outcome, DiprError):
            pending.future.set_exception(outcome)
        else:
            pending.future.set_result(outcome)

    def _lost(self, link: _Link, reason: str) -> None:
        """Every request in flight on `link` is answered now: not ready, the reason."""
        with link.lock:
            if not link.alive:
                return
            link.alive = False
            pending = list(link.pending.values())
            link.pending.clear()
        self._down = reason
        if self._link is link:
            self._link = None
        for waiting in pending:
            error = NotReady(f"not ready: {reason}")
            waiting.loop.call_soon_threadsafe(_fail, waiting.future, error)
        # Slabs are written on the event loop: unmapped there, between two writes. No loop yet:
        # nothing has written (a first request sets it before it looks at the link).
        loop = self._loop
        if loop is None:
            _release(link)
        else:
            try:
                loop.call_soon_threadsafe(_release, link)
            except RuntimeError:  # the loop is closed: nothing writes any more
                _release(link)


def _fail(future: asyncio.Future[dict[str, np.ndarray]], error: DiprError) -> None:
    if not future.done():
        future.set_exception(error)


def _release(link: _Link) -> None:
    for slab in link.slabs.values():
        slab.release()


class RemoteBatcher(CropSubmitter):
    """What the pose or detect stage calls, as it would a Batcher: crops in, rows out."""

    def __init__(self, inference: RemoteInference, model: int) -> None:
        self._inference = inference
        self.model = model
        self.name = MODEL_NAMES[model]

    async def submit(self, crops: np.ndarray, deadline: float) -> dict[str, np.ndarray]:
        """Run `crops` [n, H, W, 3]; returns each output with n rows, in crop order. More crops
        than this process's slots (the persons a detector found in many images) go in parts."""
        if len(crops) == 0:
            return {}
        slots = self._inference.slots(self.model)
        if slots == 0 or len(crops) <= slots:
            return await self._inference.infer(self.model, crops, deadline)
        parts = [
            await self._inference.infer(self.model, crops[start : start + slots], deadline)
            for start in range(0, len(crops), slots)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
