"""Running work as people see it: a `Run` per handler run, its progress and output lines.

A run is one hop's handler run (an attempt: a retried hop is a new run). `StreamPump.runs`
builds the records on demand from what the pump holds anyway (its open conversations' running
hops and its listeners' backlogs), so listing costs nothing per hop; a hop only gets a run id
and a start time when its handler starts. What a handler reports with ``meta.progress`` and
``meta.log`` is kept on its hop, the last `MAX_OUTPUT_LINES` lines of output per run.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["MAX_OUTPUT_LINES", "Run", "RunOutput", "RunStatus"]

MAX_OUTPUT_LINES = 100
RunStatus = Literal["queued", "running", "waiting"]
_PID = os.getpid()
_HOST = socket.gethostname()


class RunOutput:
    """The output lines of one run: the last `MAX_OUTPUT_LINES` kept, the rest counted."""

    __slots__ = ("dropped", "lines")

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=MAX_OUTPUT_LINES)
        self.dropped = 0

    def write(self, line: str) -> None:
        """Keep ``line``, dropping (and counting) the oldest one when full."""
        if len(self.lines) == MAX_OUTPUT_LINES:
            self.dropped += 1
        self.lines.append(line)


@dataclass(frozen=True, slots=True)
class Run:
    """One handler run of a running organism (`Organism.runs`).

    Attributes:
        run_id: its id, for `Organism.cancel_run` (``""`` while queued: it has not started).
        listener: the listener whose handler runs.
        conversation: the conversation it runs in.
        thread: the opaque thread id of the call it handles.
        attempt: 1, or more for a retry.
        status: ``queued`` (waiting for a slot of its listener), ``running``, or ``waiting``
            (its handler awaits a ``meta.call``).
        started_at: when its handler started (seconds since the epoch; ``None`` if queued).
        elapsed_seconds: how long it has run (``0.0`` if queued).
        cpu_bound: it runs in a worker process of the pool.
        pid: the organism's process id; host: its host name.
        progress: what the handler last said with ``meta.progress``.
        output: its last lines written with ``meta.log`` (at most `MAX_OUTPUT_LINES`).
        output_dropped: older lines dropped from ``output``.
    """

    run_id: str
    listener: str
    conversation: str
    thread: str
    attempt: int
    status: RunStatus
    started_at: float | None
    elapsed_seconds: float
    cpu_bound: bool
    pid: int = _PID
    host: str = _HOST
    progress: str = ""
    output: tuple[str, ...] = ()
    output_dropped: int = 0
