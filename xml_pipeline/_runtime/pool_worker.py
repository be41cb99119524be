"""The child side of `ProcessPool`: what runs in each worker process.

Kept apart from the parent side (`xml_pipeline._runtime.pool`) so that what crosses the process
boundary is plain to see: a worker reports each call's start on the start pipe, runs it, and
sends back either its result pickled or, for every failure, plain strings (`failure_data`),
never a pickled exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import pickle
import struct
import sys
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = [
    "OUTPUT",
    "OUTPUT_DROPPED",
    "OUTPUT_LINE",
    "OUTPUT_PROGRESS",
    "SLOTS",
    "START",
    "Failed",
    "Withdrawn",
    "emit",
    "failure_data",
    "init_worker",
    "run_attempt",
]

START = struct.Struct("=QI")  # (attempt id, worker pid), written on the start pipe
# Slots of the shared array through which the parent withdraws calls still queued in the
# executor. A call's slot is ``attempt % SLOTS``; two withdrawn calls sharing one is harmless
# (the one overwritten runs, reports its start, and its worker is killed as before).
SLOTS = 1024
Withdrawn = ctypes.Array[ctypes.c_uint64]

# What a running call says while it runs, on the output pipe: a header (attempt id, kind,
# length) and that many bytes of UTF-8. A record is at most `_RECORD_MAX` bytes, below
# PIPE_BUF, so records from several workers never interleave; longer lines are cut.
OUTPUT = struct.Struct("=QBH")
OUTPUT_LINE, OUTPUT_PROGRESS, OUTPUT_DROPPED = 0, 1, 2  # kinds: a line, progress, lines lost
_RECORD_MAX = 4000
_TEXT_MAX = _RECORD_MAX - OUTPUT.size

_worker_start_pipe: Connection | None = None  # set in each worker by init_worker
_worker_withdrawn: Withdrawn | None = None  # likewise
_worker_output: int = -1  # the output pipe's write end (non-blocking), set by init_worker
_attempt = 0  # the call this worker runs now (0: none)
_dropped = 0  # records of this call not written: the pipe was full (the parent is busy)


def init_worker(
    pipe: Connection,
    withdrawn: Withdrawn,
    output: Connection | None,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    global _worker_start_pipe, _worker_withdrawn, _worker_output
    _worker_start_pipe, _worker_withdrawn = pipe, withdrawn
    if output is not None:
        _worker_output = output.fileno()
        # a full pipe (the parent's loop is busy) drops lines, counted: it never stalls the work
        os.set_blocking(_worker_output, False)
    if initializer is not None:
        initializer(*initargs)


# (stage, type name, message, reason, traceback): stage is "call" (the function or its
# arguments could not be rebuilt), "raised" (fn raised) or "result" (it could not be pickled)
Failed = tuple[str, str, str, str | None, str]


def failure_data(stage: str, exc: BaseException) -> Failed:
    """``exc`` as plain strings; nothing here may raise, whatever ``exc`` does."""
    cls = type(exc)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    try:
        message = str(exc)
    except BaseException as bad:  # a __str__ that raises
        message = f"<str() raised {type(bad).__name__}>"
    try:
        code = getattr(exc, "reason", None)
        reason = str.__str__(code) if isinstance(code, str) else None
    except BaseException:
        reason = None
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException:
        text = f"{name}: {message}\n"
    return stage, name, message, reason, text


def emit(kind: int, text: str) -> None:
    """Send a line of output (or progress) of the running call to the parent; nothing
    outside a call, or when the pool has no output pipe. Never blocks, never raises."""
    global _dropped
    if _worker_output < 0 or not _attempt:
        return
    if _dropped:
        if not _write(OUTPUT_DROPPED, str(_dropped).encode()):
            _dropped += 1
            return
        _dropped = 0
    data = text.encode("utf-8", "replace")[:_TEXT_MAX]
    if not _write(kind, data):
        _dropped += 1


def _write(kind: int, data: bytes) -> bool:
    try:
        os.write(_worker_output, OUTPUT.pack(_attempt, kind, len(data)) + data)
    except OSError:  # BlockingIOError: full; anything else: the parent is gone
        return False
    return True


class _Lines(io.TextIOBase):
    """sys.stdout/sys.stderr of a running call: each whole line sent with `emit`."""

    def __init__(self) -> None:
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + str(text)).split("\n")
        self._partial = lines.pop()
        for line in lines:
            emit(OUTPUT_LINE, line)
        if len(self._partial) > _TEXT_MAX:
            emit(OUTPUT_LINE, self._partial)
            self._partial = ""
        return len(text)

    def flush(self) -> None:
        if self._partial:
            emit(OUTPUT_LINE, self._partial)
            self._partial = ""


@contextlib.contextmanager
def _captured(attempt: int) -> Any:
    global _attempt, _dropped
    _attempt, _dropped = attempt, 0
    saved = sys.stdout, sys.stderr
    out = _Lines()
    sys.stdout = sys.stderr = out
    try:
        yield
    finally:
        out.flush()
        sys.stdout, sys.stderr = saved
        if _dropped:
            _write(OUTPUT_DROPPED, str(_dropped).encode())
        _attempt = 0


def run_attempt(attempt: int, call: bytes) -> bytes | Failed | None:
    assert _worker_start_pipe is not None, "worker started without ProcessPool's initializer"
    assert _worker_withdrawn is not None
    # Checked before the start is reported, never after: a call that reports its start runs,
    # so the parent may kill the worker of an abandoned call as soon as it sees the start.
    if _worker_withdrawn[attempt % SLOTS] == attempt:
        return None  # its caller left while it was queued: nothing ran, nothing to kill
    os.write(_worker_start_pipe.fileno(), START.pack(attempt, os.getpid()))
    # Every way this call can fail becomes plain data, BaseException included: SystemExit,
    # GeneratorExit or KeyboardInterrupt from fn must neither end the worker nor be mistaken
    # for a crash. The call is unpickled here, after the start is reported, so that a function
    # the worker cannot import fails this call, not the worker.
    try:
        fn, args = pickle.loads(call)
    except BaseException as exc:
        return failure_data("call", exc)
    try:
        with _captured(attempt):  # its prints become the run's output lines
            result = fn(*args)
    except BaseException as exc:
        return failure_data("raised", exc)
    try:
        # pickled here so that a result that cannot be pickled fails this call alone; the
        # parent unpickles it, and a result it cannot rebuild fails this call alone too
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        return failure_data("result", exc)
