"""Module-level task functions for tests/test_pool.py: workers import them by name."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

_marker: str | None = None


def echo(value: object) -> object:
    """Return ``value`` unchanged."""
    return value


def pid() -> int:
    """Return the worker's pid."""
    return os.getpid()


def fail(message: str) -> None:
    """Raise ValueError(message)."""
    raise ValueError(message)


def nap(seconds: float, value: object) -> object:
    """Sleep, then return ``value``."""
    time.sleep(seconds)
    return value


def nap_and_tell(pid_file: str, seconds: float) -> None:
    """Write the worker's pid to ``pid_file``, then sleep (to be timed out or cancelled)."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)


def crash(how: str) -> None:
    """Kill the worker process the way ``how`` says: exit, sigkill or segfault."""
    if how == "exit":
        os._exit(13)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    elif how == "segfault":
        ctypes.string_at(0)
    raise AssertionError(f"unknown crash {how!r}")


def crash_always(runs_file: str) -> None:
    """Count the run in ``runs_file``, then crash."""
    with open(runs_file, "a") as f:
        f.write("run\n")
    crash("exit")


def crash_once(marker_file: str, how: str, value: object) -> object:
    """Crash the first time (leaving ``marker_file``), return ``value`` afterwards."""
    marker = Path(marker_file)
    if not marker.exists():
        marker.touch()
        crash(how)
    return value


def burn(seconds: float) -> int:
    """Keep a core busy for ``seconds``; return how many loop turns that took."""
    deadline = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < deadline:
        turns += 1
    return turns


def set_marker(value: str) -> None:
    """Pool initializer: remember ``value`` in this worker."""
    global _marker
    _marker = value


def get_marker() -> str | None:
    """Return what the initializer remembered."""
    return _marker


def broken_initializer() -> None:
    """Pool initializer that fails."""
    raise RuntimeError("initializer failed on purpose")


def stop() -> None:
    """Raise StopIteration, which an asyncio Future cannot carry."""
    raise StopIteration("done")


def exit_now(code: int) -> None:
    raise SystemExit(code)


def _explode(text: str) -> int:
    return int(text)  # raises ValueError when the worker rebuilds the object


class BadUnpickle:
    """Pickles fine in the parent; rebuilding it in the worker raises."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_explode, ("not a number",))
