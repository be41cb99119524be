"""Running work as people see it: a `Run` per handler run, its progress and output lines.

A run is one hop's handler run (an attempt: a retried hop is a new run). `RunViews`
(``xml_pipeline._runtime.run_views``) builds the records on demand from what the pump holds
anyway (its open conversations' running hops and its listeners' backlogs), so listing costs
nothing per hop; a hop only gets a run id and a start time when its handler starts. What a
handler reports with ``meta.progress`` and ``meta.log`` is kept on its hop, the last
`MAX_OUTPUT_LINES` lines of output per run.

A finished run costs one append to a bounded deque: the hop itself, its outcome and the time,
and the `Run` record is built only when somebody lists it. Runs travel between processes as
JSON (`Run.to_dict`, `Run.from_dict`) inside a process's heartbeat snapshot
(`xml_pipeline._runtime.heartbeat`).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ACTIVE",
    "MAX_OUTPUT_LINES",
    "Run",
    "RunOutput",
    "RunStatus",
    "Worker",
    "WorkerStatus",
    "rss_bytes",
]

MAX_OUTPUT_LINES = 100
RunStatus = Literal["queued", "running", "waiting", "completed", "failed", "cancelled", "lost"]
WorkerStatus = Literal["busy", "idle"]
ACTIVE = frozenset({"queued", "running", "waiting"})  # not finished: what a lost process leaves
_PID = os.getpid()
_HOST = socket.gethostname()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int) -> int:
    """The resident memory of process ``pid`` in bytes (Linux ``/proc``), 0 where unknown."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


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
        output: its last lines written with ``meta.log`` (and, for ``cpu_bound``, printed to
            stdout or stderr), at most `MAX_OUTPUT_LINES`.
        output_dropped: older lines dropped from ``output``.
        outcome: for a finished run, ``ok`` (``completed``) or the reason code it failed or
            was cancelled with (``handler_error``, ``timeout``, ``cancelled``, ``ended``: its
            conversation ended under it, ``shutdown``...); ``""`` while it runs, ``lost`` for
            a run of a process that stopped heartbeating.
        message: what went wrong, for a failed or cancelled run.
        finished_at: when it finished (seconds since the epoch), ``None`` before.
        worker_pid: the pid of the worker process running a ``cpu_bound`` run (``None``
            otherwise, and before the worker reported its start).
        process: the instance id of the organism process that owns it (run ids end with it:
            ``r12@3fa9c1``).
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
    outcome: str = ""
    message: str = ""
    finished_at: float | None = None
    worker_pid: int | None = None
    process: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The run as a JSON-ready dict, keyed by field name (``output`` as a list)."""
        found = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        found["output"] = list(self.output)
        return found

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        """The run `to_dict` gave (keys it does not know are ignored: a newer process's).

        Raises:
            KeyError, TypeError: ``data`` is not a run's dict.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values["output"] = tuple(values.get("output", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Worker:
    """One worker process of the organism's pool (`Organism.workers`).

    Attributes:
        pid: its process id.
        status: ``busy`` (running a call) or ``idle``.
        runs_done: calls it finished since it started.
        rss_bytes: its resident memory now (from ``/proc``; 0 where that cannot be read).
        run_id: the run it runs now (``None`` when idle, or running work that is not a run).
    """

    pid: int
    status: WorkerStatus
    runs_done: int
    rss_bytes: int
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The worker as a JSON-ready dict, keyed by field name."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
