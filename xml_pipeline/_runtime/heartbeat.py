"""Every process's runs, through the backend: the heartbeat that shares them, and steering.

Each running organism is a *process* with an instance id (six hex digits, new at every start;
run ids end with it: ``r12@3fa9c1``). Every ``heartbeat_seconds`` its `Heartbeat` writes a
snapshot of its runs (`RunViews.runs`, as JSON) to the backend and takes, in the same step,
the commands other processes queued for it (cancel a run, cancel a conversation), which it
carries out at once. So a cancel from another process takes effect within one heartbeat
interval (plus a backend round trip).

Reading (`Heartbeat.all_runs`) merges this process's runs, read live, with the snapshots of
the others. A snapshot older than ``lost_after_seconds`` by the backend's clock is a process
that stopped (killed, frozen, cut off): its unfinished runs are listed as ``lost``. After
``forget_after_seconds`` without a write the backend drops the snapshot. A process that stops
cleanly removes its snapshot.

Nothing here runs per hop: one snapshot per interval, built from what the pump holds anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
from typing import Any

from xml_pipeline._errors import UnknownIdError, UsageError
from xml_pipeline._runtime.pump import StreamPump
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.runs import ACTIVE, Run
from xml_pipeline.backends.base import RunSnapshot

__all__ = ["Heartbeat", "new_process_id"]

log = logging.getLogger("xml_pipeline.runs")

# Unfinished runs one snapshot carries at most (a backlog of thousands is counted, not sent).
MAX_SNAPSHOT_RUNS = 1000


def new_process_id() -> str:
    """A fresh instance id for an organism process (six hex digits)."""
    return os.urandom(3).hex()


class Heartbeat:
    """Writes this process's runs to the backend and carries out commands left for it.

    ``interval`` 0: no heartbeat task (nothing is written; other processes do not see this
    one), but `all_runs` still reads the others.
    """

    def __init__(
        self,
        pump: StreamPump,
        registry: ThreadRegistry,
        *,
        interval: float,
        lost_after: float,
        forget_after: float,
    ) -> None:
        self._pump = pump
        self._registry = registry
        self.process = pump.process
        self._interval = interval
        self._lost_after = lost_after
        self._forget_after = max(forget_after, lost_after)
        self._task: asyncio.Task[None] | None = None
        self._failing = False  # a failed write was logged; the next success says so too
        self.beats = 0

    async def start(self) -> None:
        """Write the first snapshot now (so peers see this process at once), then start the
        task that writes one every interval.

        Raises:
            BackendError: the first write failed.
        """
        if self._interval <= 0:
            return
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop writing and remove this process's snapshot (it stopped: nothing is lost)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
            try:
                await self._registry.delete_runs(self.process)
            except Exception as exc:  # it is forgotten after forget_after_seconds anyway
                log.warning("could not remove the runs of process %s: %s", self.process, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.beat()
            except Exception as exc:
                if not self._failing:
                    log.warning(
                        "process %s could not write its runs to the backend (%s); other "
                        "processes will list them as lost after %gs; trying again every %gs",
                        self.process, exc, self._lost_after, self._interval,
                    )  # fmt: skip
                self._failing = True
            else:
                if self._failing:
                    log.warning("process %s writes its runs to the backend again", self.process)
                self._failing = False

    async def beat(self) -> None:
        """One heartbeat: write the snapshot, take the commands, carry them out."""
        snapshot = self._snapshot()
        commands = await self._registry.put_runs(self.process, snapshot, self._forget_after)
        self.beats += 1
        for command in commands:
            await self._carry_out(command)

    def _snapshot(self) -> bytes:
        active, omitted = self._pump.run_views.active_runs(MAX_SNAPSHOT_RUNS)
        kept = active + self._pump.run_views.finished_runs()
        document = {
            "process": self.process,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "omitted": omitted,
            "runs": [_plain(run) for run in kept],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    async def _carry_out(self, raw: bytes) -> None:
        try:
            command = json.loads(raw)
            op, target = command["op"], command["id"]
        except (ValueError, KeyError, TypeError):
            log.warning("process %s got a command it cannot read: %r", self.process, raw[:200])
            return
        try:
            if op == "cancel_run":
                self._pump.cancel_run(target)
            elif op == "cancel_conversation":
                await self._pump.cancel_conversation(target)
            else:
                log.warning("process %s got an unknown command %r", self.process, op)
        except UsageError as exc:  # it finished (or ended) while the command travelled
            log.info("process %s: %s (%s)", self.process, exc.message, op)

    # -- reading and steering every process ---------------------------------------------------

    async def all_runs(self, listener: str | None, status: str | None) -> list[Run]:
        """This process's runs (live), then every other process's, as `Organism.all_runs`.

        Raises:
            BackendError: the backend is unreachable.
        """
        found = self._pump.run_views.runs(listener, status)
        for snap in await self._registry.run_snapshots():
            if snap.process == self.process:
                continue
            for run in self._read(snap):
                if (listener is None or run.listener == listener) and (
                    status is None or run.status == status
                ):
                    found.append(run)
        return found

    def _read(self, snap: RunSnapshot) -> list[Run]:
        try:
            document = json.loads(snap.snapshot)
            runs = [Run.from_dict(item) for item in document["runs"]]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("the runs of process %s cannot be read: %s", snap.process, exc)
            return []
        lost = snap.age_seconds > self._lost_after
        age = snap.age_seconds
        return [_aged(run, age, lost) for run in runs]

    async def cancel_run(self, run_id: str, process: str) -> None:
        """Cancel a run of another process: queue the command it takes at its next heartbeat.

        Raises:
            UnknownIdError: no process ``process`` is listed, or it has no run ``run_id``.
            UsageError: the run has finished, or its process is lost.
            BackendError: the backend is unreachable.
        """
        snap = await self._snapshot_of(process, run_id)
        number = run_id.partition("@")[0]
        runs = [run for run in self._read(snap) if run.run_id.partition("@")[0] == number]
        if not runs:
            raise UnknownIdError(
                f"process {process} has no run {run_id}; list them with all_runs()",
                kind="run",
                id=run_id,
            )
        run = runs[0]
        if run.status == "lost":
            raise UsageError(
                f"run {run_id} is lost: process {process} has not been heard from for "
                f"{snap.age_seconds:.1f}s, so nothing can cancel it there"
            )
        if run.status not in ACTIVE:
            raise UsageError(f"run {run_id} is not running any more: it finished ({run.status})")
        await self._push(process, {"op": "cancel_run", "id": number}, "run", run_id)

    async def cancel_conversation(self, conversation: str) -> None:
        """Cancel a conversation open in another process (found among its runs).

        Raises:
            UnknownIdError: no process lists an unfinished run of that conversation.
            BackendError: the backend is unreachable.
        """
        for snap in await self._registry.run_snapshots():
            if snap.process == self.process:
                continue
            if any(
                run.conversation == conversation and run.status in ACTIVE
                for run in self._read(snap)
            ):
                command = {"op": "cancel_conversation", "id": conversation}
                await self._push(snap.process, command, "conversation", conversation)
                return
        raise UnknownIdError(
            f"no open conversation {conversation!r} in any process: it ended already or "
            "never existed",
            kind="conversation",
            id=conversation,
        )

    async def _snapshot_of(self, process: str, run_id: str) -> RunSnapshot:
        for snap in await self._registry.run_snapshots():
            if snap.process == process:
                return snap
        raise UnknownIdError(
            f"no run {run_id}: no process {process} shares this backend now (it stopped, or "
            "was never there)",
            kind="run",
            id=run_id,
        )

    async def _push(self, process: str, command: dict[str, str], kind: str, ident: str) -> None:
        if not await self._registry.push_run_command(process, json.dumps(command).encode()):
            raise UnknownIdError(
                f"no {kind} {ident}: process {process} is gone", kind=kind, id=ident
            )


def _plain(run: Run) -> dict[str, Any]:
    return run.to_dict()


def _aged(run: Run, age: float, lost: bool) -> Run:
    """A run as read from a snapshot ``age`` seconds old: unfinished runs have run that much
    longer, or are lost (their elapsed time is what it was when their process was last heard
    from: nobody knows how long they ran after that)."""
    if run.status not in ACTIVE:
        return run
    if lost:
        return dataclasses.replace(run, status="lost", outcome="lost")
    elapsed = run.elapsed_seconds + age if run.started_at is not None else 0.0
    return dataclasses.replace(run, elapsed_seconds=elapsed)
