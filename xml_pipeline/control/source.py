"""The organism as the control plane sees it: one adapter over the public `Organism` API.

Everything the HTTP API and the event stream read or do goes through `OrganismSource`, so a
change of the organism's API is a change of this module only. It never imports `Organism` (the
organism imports the control plane): it calls what it is given, typed as `Controlled`.

Errors are translated into two of the control plane's own: `Missing` (HTTP 404: no such run,
conversation or worker) and `Finished` (HTTP 409: the run finished already).
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from xml_pipeline._errors import NotFoundError, UnknownIdError, UsageError
from xml_pipeline.metrics.trace import Trace, TraceHop

__all__ = [
    "Controlled",
    "Finished",
    "Invalid",
    "Missing",
    "OrganismSource",
    "Stopped",
    "trace_from_dict",
    "trace_to_dict",
]


class Missing(LookupError):
    """No run, conversation or worker has that id (HTTP 404)."""

    def __init__(self, kind: str, id: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.id, self.message = kind, id, message


class Finished(ValueError):
    """The run finished already, or is lost (its process stopped heartbeating): there is
    nothing to cancel (HTTP 409)."""

    def __init__(self, id: str, message: str) -> None:
        super().__init__(message)
        self.id, self.message = id, message


class Invalid(ValueError):
    """A query the organism refused (an unknown status to filter by): HTTP 400."""


class Stopped(RuntimeError):
    """The organism is not running (stopping, or stopped): HTTP 503."""


class Controlled(Protocol):
    """What the control plane uses of an `Organism` (documented there)."""

    @property
    def name(self) -> str: ...
    @property
    def listeners(self) -> Sequence[Any]: ...

    @property
    def stats(self) -> Any: ...
    @property
    def metrics(self) -> Any: ...
    async def all_runs(
        self, *, listener: str | None = ..., status: str | None = ...
    ) -> list[Any]: ...
    async def cancel_run(self, run_id: str) -> None: ...
    async def cancel_conversation(self, conversation: str) -> None: ...
    def workers(self) -> list[Any]: ...
    async def kill_worker(self, pid: int) -> None: ...
    async def trace(self, conversation: str) -> Trace: ...
    def recovery_status(self) -> dict[str, Any]: ...


class OrganismSource:
    """Reads and steers one organism for the control plane."""

    def __init__(self, organism: Controlled) -> None:
        self.organism = organism

    @property
    def name(self) -> str:
        return self.organism.name

    async def runs(self, listener: str | None = None, status: str | None = None) -> list[Any]:
        """The runs of every process sharing the backend (`all_runs`), or of this one."""
        try:
            return await self.organism.all_runs(listener=listener, status=status)
        except UsageError as exc:
            raise self._refused("run", "", exc) from None

    async def run_dicts(self, listener: str | None = None, status: str | None = None) -> list[Any]:
        return [run.to_dict() for run in await self.runs(listener, status)]

    async def run(self, run_id: str) -> dict[str, Any]:
        """One run, with its output lines.

        Raises:
            Missing: no run has that id.
        """
        for run in await self.runs():
            if run.run_id == run_id or run.run_id.partition("@")[0] == run_id:
                return dict(run.to_dict())
        raise Missing("run", run_id, f"no run {run_id!r} in organism {self.name!r}")

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a running handler.

        Raises:
            Missing: no run has that id. Finished: it finished already.
        """
        try:
            await self.organism.cancel_run(run_id)
        except UsageError as exc:
            raise self._refused("run", run_id, exc) from None

    async def cancel_conversation(self, conversation: str) -> None:
        """End an open conversation with ``cancelled``.

        Raises:
            Missing: no open conversation has that id.
        """
        try:
            await self.organism.cancel_conversation(conversation)
        except UsageError as exc:
            raise self._refused("conversation", conversation, exc) from None

    async def conversations(self) -> list[dict[str, Any]]:
        """The open conversations that have runs, from the runs listed (oldest first)."""
        now = time.time()
        found: dict[str, dict[str, Any]] = {}
        for run in await self.runs():
            entry = found.setdefault(
                run.conversation,
                {"id": run.conversation, "started_by": run.listener, "started_at": None,
                 "age_seconds": 0.0, "runs": 0, "listeners": []},
            )  # fmt: skip
            if getattr(run, "finished_at", None) is not None:
                continue
            entry["runs"] += 1
            if run.listener not in entry["listeners"]:
                entry["listeners"].append(run.listener)
            if run.started_at is not None and (
                entry["started_at"] is None or run.started_at < entry["started_at"]
            ):
                entry["started_at"] = run.started_at
                entry["started_by"] = run.listener
                entry["age_seconds"] = round(now - run.started_at, 3)
        return sorted(
            (c for c in found.values() if c["runs"]), key=lambda c: c["started_at"] or now
        )

    def workers(self) -> list[dict[str, Any]]:
        """The pool's worker processes (none before the run registry lists them)."""
        try:
            return [worker.to_dict() for worker in self.organism.workers()]
        except UsageError as exc:
            raise Stopped(str(exc)) from None

    async def kill_worker(self, pid: int) -> None:
        """SIGKILL a worker process of the pool (the pool replaces it).

        Raises:
            Missing: no worker has that pid.
        """
        try:
            await self.organism.kill_worker(pid)
        except UsageError as exc:
            raise self._refused("worker", str(pid), exc) from None

    def stats(self) -> dict[str, Any]:
        """The organism's counters (`Organism.stats`) as a dict."""
        return dataclasses.asdict(self.organism.stats)

    def recovery(self) -> dict[str, dict[str, Any]]:
        """Each listener's recovery counters (`Organism.recovery_status`)."""
        return {
            name: dataclasses.asdict(status)
            for name, status in self.organism.recovery_status().items()
        }

    def metrics_stats(self) -> dict[str, Any] | None:
        """The metrics collector's per-sink counters, or None without one."""
        collector = self.organism.metrics
        if collector is None:
            return None
        return {name: dataclasses.asdict(s) for name, s in collector.stats().items()}

    def exposition(self) -> tuple[bytes, str] | None:
        """The Prometheus exposition of a sink served here, or None (see `MetricsCollector`)."""
        collector = self.organism.metrics
        return None if collector is None else collector.exposition()

    async def trace(self, conversation: str) -> dict[str, Any]:
        """A conversation's hop tree as a dict (`trace_to_dict`).

        Raises:
            Missing: the organism keeps no trace of it (the message says why).
        """
        try:
            return trace_to_dict(await self.organism.trace(conversation))
        except NotFoundError as exc:
            raise Missing("conversation", conversation, exc.message) from None

    def graph(self) -> dict[str, Any]:
        """Listeners, peers as edges, the backend: what the console draws."""
        listeners = self.organism.listeners
        return {
            "name": self.name,
            "listeners": [
                {
                    "name": x.name,
                    "cpu_bound": x.cpu_bound,
                    "handles_errors": x.handles_errors,
                    "max_concurrency": x.max_concurrency,
                }
                for x in listeners
            ],
            "edges": [{"from": x.name, "to": peer} for x in listeners for peer in x.peers],
            "backend": str(getattr(self.organism, "backend_description", "")),
            "mermaid": _mermaid(self.name, listeners),
        }

    def _refused(self, kind: str, id: str, exc: UsageError) -> Exception:
        """The organism's refusal as the control plane's: 404, 409, 503 or 400."""
        if isinstance(exc, UnknownIdError):
            return Missing(exc.kind, exc.id, exc.message)
        if f"organism {self.name!r} is not running" in exc.message:
            return Stopped(exc.message)
        if kind == "run" and ("not running any more" in exc.message or " is lost: " in exc.message):
            return Finished(id, exc.message)  # listed, but nothing runs to cancel: 409, not 404
        if id:  # an id of the wrong form names nothing
            return Missing(kind, id, exc.message)
        return Invalid(exc.message)


def _mermaid(name: str, listeners: Iterable[Any]) -> str:
    """A Mermaid flowchart of the listeners and their peers (ids are node numbers)."""
    listeners = list(listeners)
    ids = {x.name: f"n{i}" for i, x in enumerate(listeners)}
    lines = ["flowchart LR"]
    for x in listeners:
        label = x.name.replace('"', "#quot;")
        lines.append(f'    {ids[x.name]}["{label}"]')
    lines += [f"    {ids[x.name]} --> {ids[p]}" for x in listeners for p in x.peers if p in ids]
    return "\n".join(lines) + "\n"


_HOP_FIELDS = tuple(f.name for f in dataclasses.fields(TraceHop) if f.name != "children")


def trace_to_dict(trace: Trace) -> dict[str, Any]:
    """A `Trace` as JSON-ready data (hops nested under ``children``; built without recursion,
    so a chain of thousands of hops converts)."""
    top: dict[str, Any] = {
        f.name: getattr(trace, f.name) for f in dataclasses.fields(trace) if f.name != "hops"
    }
    top["hops"] = []
    todo = deque((hop, top["hops"]) for hop in trace.hops)
    while todo:
        hop, into = todo.popleft()
        entry = {name: getattr(hop, name) for name in _HOP_FIELDS}
        entry["children"] = []
        into.append(entry)
        todo.extend((child, entry["children"]) for child in hop.children)
    return top


def trace_from_dict(data: dict[str, Any]) -> Trace:
    """The `Trace` that `trace_to_dict` wrote (built without recursion)."""
    order: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    stack: list[tuple[dict[str, Any], dict[str, Any] | None]] = [(h, None) for h in data["hops"]]
    while stack:
        entry, parent = stack.pop()
        order.append((entry, parent))
        stack.extend((child, entry) for child in entry.get("children", ()))
    built: dict[int, TraceHop] = {}
    for entry, _ in reversed(order):  # children before their parents
        children = tuple(built[id(c)] for c in entry.get("children", ()))
        built[id(entry)] = TraceHop(**{n: entry[n] for n in _HOP_FIELDS}, children=children)
    fields = {f.name for f in dataclasses.fields(Trace)} - {"hops"}
    return Trace(
        **{k: v for k, v in data.items() if k in fields},
        hops=tuple(built[id(h)] for h in data["hops"]),
    )
