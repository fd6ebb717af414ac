"""`dipr serve` as a child process on a free loopback port, and its resident memory.

For the tests that measure the server's memory: in a separate process the figure is the
server's alone, not the test runner's.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from dipr.benchmarks.servers import free_port, reset_peak_rss, status_kib


@dataclass
class ServiceProcess:
    url: str
    server: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.server.pid

    def rss_kib(self) -> int:
        """Resident memory (VmRSS) of the server process, KiB."""
        return status_kib(self.pid, "VmRSS")

    def reset_peak(self) -> bool:
        """Reset the process's peak resident memory (VmHWM) to its current RSS; False where the
        kernel does not let us (then only VmRSS after the fact can be seen)."""
        return reset_peak_rss(self.pid)

    def peak_rss_kib(self) -> int:
        """The most resident memory (VmHWM) since start or the last reset_peak, KiB."""
        return status_kib(self.pid, "VmHWM")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def service_process(
    log: Path,
    arguments: tuple[str, ...] = ("--log-level", "warning"),
    environment: dict[str, str] | None = None,
    **settings: object,
) -> Iterator[ServiceProcess]:
    """Run `python -m dipr.cli serve` with these settings (as DIPR_* variables) until ready;
    stopped (SIGTERM) on exit unless the test already ended it."""
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DIPR_")},
        **(environment or {}),
        **{f"DIPR_{name.upper()}": str(value) for name, value in settings.items()},
    }
    command = [sys.executable, "-m", "dipr.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *arguments]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    process = ServiceProcess(f"http://127.0.0.1:{port}", server, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                raise RuntimeError(
                    f"dipr serve exited ({server.returncode}):\n{process.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"dipr serve was not ready in 90 s:\n{process.log_tail()}")
            try:
                if httpx.get(f"{process.url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield process
    finally:
        if server.poll() is None:
            server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
