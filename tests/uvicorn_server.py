"""An ASGI app served by a real uvicorn process for tests, on a port the system picks.

`serve` runs a uvicorn command line with ``--port 0`` (never a fixed port) and reads the
address uvicorn prints; everything the server writes is kept (`Uvicorn.log`). The process
runs in its own process group, killed when the ``with`` block ends, whatever happened in it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Uvicorn", "serve"]

_RUNNING = re.compile(r"Uvicorn running on (http://\S+)")
_START_TIMEOUT = 30.0


class Uvicorn:
    """A running uvicorn process: its address, its log, and how to stop it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.url = ""
        self._lines: list[str] = []
        self._started = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)
            running = _RUNNING.search(line)
            if running and not self.url:
                self.url = running[1]
                self._started.set()
        self._started.set()  # it ended: stop waiting for it to start

    def wait_started(self, timeout: float = _START_TIMEOUT) -> None:
        """Wait until the server accepts connections (its lifespan has run).

        Raises:
            RuntimeError: it exited, or did not start within ``timeout`` seconds.
        """
        self._started.wait(timeout)
        if not self.url:
            raise RuntimeError(
                f"uvicorn did not start within {timeout} s: {self.process.args!r}\n{self.log}"
            )

    @property
    def log(self) -> str:
        """What the server printed so far (standard output and error, in order)."""
        return "".join(self._lines)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; returns its exit status (``-N`` for signal N).

        Raises:
            subprocess.TimeoutExpired: it still ran after ``timeout`` seconds.
        """
        status = self.process.wait(timeout)
        self._reader.join(timeout)
        return status

    def close(self) -> None:
        """Once the process has ended: read the rest of its output, close the pipe."""
        self._reader.join()
        assert self.process.stdout is not None
        self.process.stdout.close()

    def log_when(self, text: str, timeout: float = 10.0) -> str:
        """Wait until ``text`` appears in the log; returns the log.

        Raises:
            AssertionError: it did not appear within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert time.monotonic() < deadline, f"{text!r} not in uvicorn's log:\n{self.log}"
            time.sleep(0.01)
        return self.log


@contextlib.contextmanager
def serve(command: list[str], cwd: Path, env: dict[str, str]) -> Iterator[Uvicorn]:
    """Run the uvicorn command line ``command`` with ``--port 0`` added, in ``cwd``, and yield
    it once it serves.

    Raises:
        RuntimeError: it did not start (the message holds its log).
    """
    process = subprocess.Popen(
        [*command, "--port", "0"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server = Uvicorn(process)
    try:
        server.wait_started()
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        server.close()
