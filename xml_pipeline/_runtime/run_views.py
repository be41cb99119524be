"""Seeing running work: `RunViews` builds `Run` and `Worker` records from what the pump holds.

Nothing here runs per hop: the pump gives a hop its run number and start time when its handler
starts and appends ``(hop, outcome, message, finished_at)`` to a bounded deque when it ends;
the records are built only when somebody lists them (`Organism.runs`, the heartbeat, the
control plane).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping

from xml_pipeline._errors import UnknownIdError, UsageError
from xml_pipeline._runtime.hops import Hop, ListenerState
from xml_pipeline._runtime.outcomes import Conversations
from xml_pipeline._runtime.pool import ProcessPool
from xml_pipeline._runtime.runs import ACTIVE, Run, RunStatus, Worker, rss_bytes

__all__ = ["Finished", "RunViews"]

# one finished run: its hop, its outcome ("ok" or a reason), the failure's message, when (epoch s)
Finished = tuple[Hop, str, str, float]

# a finished run's outcome -> its status (every other outcome is a failure)
_FINISHED: dict[str, RunStatus] = {
    "ok": "completed",
    "cancelled": "cancelled",
    "ended": "cancelled",
    "shutdown": "cancelled",
}


class RunViews:
    """The runs of one pump: its open conversations' running hops, its listeners' backlogs and
    the ``finished`` runs it keeps (newest last; ``None``: none kept). Run ids are
    ``r<number>@<process>`` (``r<number>`` when ``process`` is empty)."""

    __slots__ = ("_conversations", "_finished", "_pool", "_states", "_suffix", "process")

    def __init__(
        self,
        conversations: Conversations,
        states: Mapping[str, ListenerState],
        finished: deque[Finished] | None,
        pool: ProcessPool | None,
        process: str,
    ) -> None:
        self._conversations = conversations
        self._states = states
        self._finished = finished
        self._pool = pool
        self.process = process
        self._suffix = f"@{process}" if process else ""

    def run_id(self, number: int) -> str:
        """The id of run ``number`` of this process (``r12@3fa9c1``)."""
        return f"r{number}{self._suffix}"

    def runs(self, listener: str | None = None, status: str | None = None) -> list[Run]:
        """The handler runs of open conversations now (running, waiting in ``meta.call``, and
        queued for a slot), then the finished runs kept, newest first (see `Organism.runs`)."""
        found, _ = self.active_runs()
        if status not in ACTIVE:
            found += self.finished_runs()
        return [
            run
            for run in found
            if (listener is None or run.listener == listener)
            and (status is None or run.status == status)
        ]

    def active_runs(self, limit: int | None = None) -> tuple[list[Run], int]:
        """The unfinished runs now (running and waiting first, then queued), at most
        ``limit`` of them, and how many more there are (a backlog is counted, not built)."""
        if self._pool is not None:
            self._pool.drain_starts()  # the worker pids of cpu_bound runs
        now = time.time()
        found: list[Run] = []
        cap = math.inf if limit is None else limit
        for conv in self._conversations.all():
            for hop in conv.running:
                if len(found) < cap:
                    found.append(self._record(hop, "waiting" if hop.waits else "running", now))
        for state in self._states.values():
            for hop in state.backlog:
                if len(found) >= cap:
                    break
                if not hop.conv.done:
                    found.append(self._record(hop, "queued", now))
        if limit is None or len(found) < limit:
            return found, 0
        running = sum(len(conv.running) for conv in self._conversations.all())
        queued = sum(1 for st in self._states.values() for hop in st.backlog if not hop.conv.done)
        return found, max(0, running + queued - len(found))

    def finished_runs(self) -> list[Run]:
        """The finished runs kept, newest first."""
        if self._finished is None:
            return []
        return [
            self._record(hop, _FINISHED.get(outcome, "failed"), at, outcome, message)
            for hop, outcome, message, at in reversed(self._finished)
        ]

    def running_hop(self, run_id: str, last_run: int) -> Hop:
        """The hop whose handler runs as ``run_id`` now (``last_run``: the newest run number
        given, to tell a finished run from one that never was).

        Raises:
            UnknownIdError: no run of this process has that id.
            UsageError: the run has finished, or the id is not a run id.
        """
        number = self._run_number(run_id)
        for conv in self._conversations.all():
            for hop in conv.running:
                if hop.run == number and hop.settled is None:
                    return hop
        if 0 < number <= last_run:
            raise UsageError(f"run {run_id} is not running any more: it finished")
        raise UnknownIdError(
            f"no run {run_id} in this organism; list them with runs()", kind="run", id=run_id
        )

    def workers(self, pool: ProcessPool) -> list[Worker]:
        """The worker processes of ``pool`` now, with the run each one runs (see
        `Organism.workers`)."""
        found = []
        for pid, busy, done, tag in pool.worker_states():
            run = getattr(tag, "run", 0) if busy else 0
            run_id = self.run_id(run) if run else None
            found.append(Worker(pid, "busy" if busy else "idle", done, rss_bytes(pid), run_id))
        return found

    def _run_number(self, run_id: str) -> int:
        if not isinstance(run_id, str):
            raise UsageError(f"a run id is r followed by digits (r12), not {run_id!r}")
        number, _, process = run_id.partition("@")
        if process and process != self.process:
            raise UnknownIdError(
                f"run {run_id} belongs to process {process}, not to this one ({self.process})",
                kind="run",
                id=run_id,
            )
        if not number[1:].isdigit() or number[:1] != "r":
            raise UsageError(f"a run id is r followed by digits (r12), not {run_id!r}")
        return int(number[1:])

    def _record(
        self,
        hop: Hop,
        status: RunStatus,
        at: float,
        outcome: str = "",
        message: str = "",
    ) -> Run:
        """``hop``'s run as seen at ``at`` (epoch seconds): now for an unfinished run, its end
        for a finished one (its ``outcome`` given). A queued hop has no run number yet."""
        output = hop.output
        started = bool(hop.run)
        return Run(
            run_id=self.run_id(hop.run) if started else "",
            listener=hop.state.name,
            conversation=hop.conv.id,
            thread=hop.frame.thread,
            attempt=hop.attempt,
            status=status,
            started_at=hop.started if started else None,
            elapsed_seconds=max(0.0, at - hop.started) if started else 0.0,
            cpu_bound=hop.state.cpu_bound,
            progress=hop.progress,
            output=tuple(output.lines) if output is not None else (),
            output_dropped=output.dropped if output is not None else 0,
            outcome=outcome,
            message=message,
            finished_at=at if outcome else None,
            worker_pid=getattr(hop, "worker_pid", None),
            process=self.process,
        )
