"""Module-level task functions for tests/runtime/test_pool.py: workers import them by name."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
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


# -- failures that must come back as plain data (none may be taken for a crash) -----------------


class KeywordOnlyError(Exception):
    """Pickles as cls(*args) by default, which cannot rebuild a required keyword-only arg."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


class ReduceRaises(Exception):
    """Cannot be pickled at all."""

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("ReduceRaises refuses to be pickled")


class HoldsALock(Exception):
    """Carries an attribute pickle cannot handle."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class Abort(BaseException):
    """A user's BaseException subclass."""


def _bad_xml() -> None:
    from xml_pipeline import from_xml
    from xml_pipeline._handlers import ErrorReport

    from_xml(ErrorReport, "<ErrorReport><unclosed></ErrorReport>")


RAISERS: dict[str, tuple[object, str, str]] = {
    # kind: (what to raise, its type name as reported, its message)
    "value-error": (ValueError("bad input"), "ValueError", "bad input"),
    "keyword-only": (KeywordOnlyError("needs code", code=7), "KeywordOnlyError", "needs code"),
    "reduce-raises": (ReduceRaises("unpicklable"), "ReduceRaises", "unpicklable"),
    "holds-a-lock": (HoldsALock("locked"), "HoldsALock", "locked"),
    "str-raises": (StrRaises(), "StrRaises", "<str() raised RuntimeError>"),
    "stop-iteration": (StopIteration("done"), "StopIteration", "done"),
    "generator-exit": (GeneratorExit("closed"), "GeneratorExit", "closed"),
    "system-exit": (SystemExit(3), "SystemExit", "3"),
    "keyboard-interrupt": (KeyboardInterrupt("ctrl-c"), "KeyboardInterrupt", "ctrl-c"),
    "abort": (Abort("stop everything"), "Abort", "stop everything"),
    "xml-input-error": (None, "XmlInputError", "[malformed]"),
}


def raise_kind(kind: str) -> None:
    """Raise the exception ``RAISERS[kind]`` names (built here, in the worker)."""
    if kind == "xml-input-error":
        _bad_xml()
    exc = RAISERS[kind][0]
    assert isinstance(exc, BaseException)
    raise exc


def count_and_wait(runs_file: str, value: object) -> object:
    """An innocent call in flight: count the run in ``runs_file``, wait until the test creates
    ``<runs_file>.go`` (30 s at most), return ``value``."""
    with open(runs_file, "a") as f:
        f.write(f"{value}\n")
    wait_for_release(runs_file)
    return value


def wait_for_release(runs_file: str) -> None:
    """Block until ``<runs_file>.go`` exists (30 s at most)."""
    release = Path(runs_file + ".go")
    deadline = time.monotonic() + 30
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.005)


def return_a_lock() -> object:
    """A result that cannot be pickled in the worker."""
    return threading.Lock()


def return_unloadable() -> object:
    """A result that pickles in the worker but cannot be rebuilt in the parent."""
    return BadUnpickle()


def return_keyword_only_error() -> object:
    """An exception as a *result*: pickles, but unpickling calls cls(*args) and fails."""
    return KeywordOnlyError("as a value", code=1)
