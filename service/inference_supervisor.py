"""`dipr serve`'s inference process (DIPR_FRONTEND_PROCESSES > 0): started before the front-end
processes, started again if it dies (the front-ends answer 503, not ready, meanwhile, and
reconnect), stopped after them (they drain through it)."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("dipr.service")
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after each unexpected exit in a row
STABLE_S = 60.0  # up this long: the next exit starts the delays over


class InferenceSupervisor:
    def __init__(self, socket_path: Path, log_level: str) -> None:
        self.socket_path = socket_path
        self.command = [
            sys.executable,
            "-m",
            "dipr.service.inference_process",
            "--socket",
            str(socket_path),
            "--log-level",
            log_level,
        ]
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(
            target=self._watch, name="dipr-inference-watch", daemon=True
        )

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            # A session of its own: a Ctrl-C or SIGTERM to the group reaches the front-ends,
            # which drain through the inference process; it is stopped last, by us.
            self.process = subprocess.Popen(self.command, start_new_session=True)
        log.info("inference process %d started", self.process.pid)

    def _watch(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            process = self.process
            if process is None:
                return
            started = time.monotonic()
            status = process.wait()
            if self._stopping.is_set():
                return
            _forget_metrics_of(process.pid)
            failures = 0 if time.monotonic() - started > STABLE_S else failures + 1
            delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S)) - 1] if failures else 0
            log.error(
                "the inference process %d exited (%s): front-ends answer 503 until it is back; "
                "restarting in %.1f s",
                process.pid,
                status,
                delay,
            )
            if self._stopping.wait(delay):
                return
            self._spawn()

    def stop(self, timeout: float) -> None:
        """SIGTERM: it finishes what it accepted (within `timeout`), then exits."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the inference process did not stop in %.0f s: killed", timeout)
            process.kill()
            process.wait()


def _forget_metrics_of(pid: int) -> None:
    """Its live gauges (queue depth) no longer count in the front-ends' /metrics."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
