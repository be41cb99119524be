"""Freezing a real server process for tests, and knowing that it is frozen.

``os.kill(pid, SIGSTOP)`` returns before the process has stopped: a thread that is running,
or about to run, may still answer a request or two (seen on a loaded 2-core machine). A test
whose premise is "the server answers nothing" waits until every thread shows the stopped state.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["freeze", "thaw"]


def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and return once each of its threads is stopped.

    Raises:
        TimeoutError: a thread still ran after ``timeout`` seconds.
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not _stopped(pid):
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop within {timeout} s of SIGSTOP")
        time.sleep(0.001)


def thaw(pid: int) -> None:
    """Let a frozen process run again (SIGCONT)."""
    os.kill(pid, signal.SIGCONT)


def _stopped(pid: int) -> bool:
    threads = Path(f"/proc/{pid}/task")
    for stat in threads.glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # a thread that ended meanwhile
            continue
        state = text[text.rindex(")") + 2]  # the field after the command name
        if state not in "tT":
            return False
    return True
