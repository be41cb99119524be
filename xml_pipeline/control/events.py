"""The event stream's pump side: hop events and run-set changes fanned out to each client.

`EventHub` subscribes to the organism's hooks for as long as the control plane runs (finished
hops only, so the pump builds no ``started`` events for it). Per hop it counts the hop per
listener and per edge (sender -> listener: the console's live counts) and appends the event,
as the hook built it, to each connected client's bounded queue: no awaiting, no lock, no JSON
on the pump's time (a client's own task serializes what it sends). A full queue drops the new
event and counts it; a client that has dropped a whole queue's worth is disconnected (its
cancel scope cancelled), so a client that stops reading costs the pump one length check per
hop until it goes. Every `RUNS_INTERVAL_SECONDS` a task compares the runs listed with the last
ones sent and, when they changed, queues a ``runs`` event for every client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import anyio

from xml_pipeline._runtime.hooks import Event, Hooks, HopEvent
from xml_pipeline.control.source import OrganismSource, Stopped

__all__ = ["RUNS_INTERVAL_SECONDS", "EventClient", "EventHub"]

log = logging.getLogger("xml_pipeline.control")

RUNS_INTERVAL_SECONDS = 0.5  # run-set changes are sent at most this often
_CHANGING = ("elapsed_seconds",)  # run fields that change by themselves: not a change


class EventClient:
    """One connected event-stream client: its queue, what it lost, its cancel scope."""

    __slots__ = ("dropped", "queue", "scope", "sent", "wake")

    def __init__(self) -> None:
        self.queue: deque[object] = deque()
        self.dropped = 0
        self.sent = 0
        self.wake = asyncio.Event()
        self.scope = anyio.CancelScope()


class EventHub:
    """Hop events and run changes for the event-stream clients of one control plane."""

    def __init__(self, source: OrganismSource, *, client_buffer: int) -> None:
        self._source = source
        self.client_buffer = client_buffer
        self.clients: tuple[EventClient, ...] = ()  # replaced, never changed: the hook reads it
        self.hops: Counter[str] = Counter()  # finished hops per listener
        self.failures: Counter[str] = Counter()  # of those, failed ones
        self.edges: Counter[tuple[str, str]] = Counter()  # (sender, listener) -> hops
        self.dropped = 0  # events dropped from full client queues, all clients
        self.disconnected = 0  # clients dropped for not reading
        self.served = 0  # clients ever connected
        self._runs_key: str | None = None
        self._runs_task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        # hook events are stamped with perf_counter; clients get seconds since the epoch
        self._wall = time.time() - time.perf_counter()

    def start(self, hooks: Hooks) -> None:
        """Subscribe to ``hooks`` and start the run-change task."""
        self._unsubscribe = hooks.subscribe(self._subscriber(), started=False)
        self._runs_task = asyncio.get_running_loop().create_task(
            self._watch_runs(), name="control plane: runs"
        )

    async def aclose(self) -> None:
        """Unsubscribe, stop the run-change task and end every client's stream."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        task, self._runs_task = self._runs_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for client in self.clients:
            client.scope.cancel()

    def _subscriber(self) -> Callable[[Event], None]:
        hub = self
        hops, edges, failures = self.hops, self.edges, self.failures
        limit = self.client_buffer

        def on_event(event: Event) -> None:
            if type(event) is not HopEvent or event.kind != "finished":
                return
            hops[event.listener] += 1
            edges[event.sender, event.listener] += 1
            if event.outcome is not None:
                failures[event.listener] += 1
            for client in hub.clients:
                queue = client.queue
                if len(queue) < limit:
                    queue.append(event)
                    client.wake.set()
                else:
                    hub._overflow(client)

        return on_event

    def _overflow(self, client: EventClient) -> None:
        client.dropped += 1
        self.dropped += 1
        if client.dropped == self.client_buffer:  # a whole queue lost: it does not read
            log.warning(
                "control plane: an event-stream client stopped reading; dropped after losing "
                "%d events (control.client_buffer)", client.dropped,
            )  # fmt: skip
            self.disconnected += 1
            self.remove(client)
            client.scope.cancel()

    def add(self) -> EventClient:
        """A new client, queued the current runs first."""
        client = EventClient()
        self.clients = (*self.clients, client)
        self.served += 1
        return client

    def remove(self, client: EventClient) -> None:
        """Stop queueing events for ``client`` (idempotent)."""
        self.clients = tuple(c for c in self.clients if c is not client)

    def stats(self) -> dict[str, Any]:
        """What the event stream did: clients, events dropped from full queues, clients
        disconnected for not reading."""
        return {
            "clients": len(self.clients),
            "served": self.served,
            "dropped": self.dropped,
            "disconnected": self.disconnected,
            "client_buffer": self.client_buffer,
            "queued": sum(len(c.queue) for c in self.clients),
        }

    def listener_counts(self) -> dict[str, dict[str, int]]:
        """Finished hops and failures per listener since the control plane started."""
        return {
            name: {"hops": self.hops[name], "failed": self.failures[name]}
            for name in sorted(self.hops)
        }

    def edge_counts(self) -> list[dict[str, Any]]:
        """Finished hops per (sender, listener) since the control plane started."""
        return [
            {"from": sender, "to": listener, "hops": count}
            for (sender, listener), count in sorted(self.edges.items())
        ]

    def encode(self, item: object) -> bytes:
        """One queued item as a server-sent event."""
        if type(item) is HopEvent:
            data = {
                "listener": item.listener,
                "caller": item.sender,
                "conversation": item.conversation,
                "thread": item.thread,
                "attempt": item.attempt,
                "outcome": item.outcome or "ok",
                "duration_seconds": item.duration,
                "at": round(self._wall + item.at, 6),
            }
            return b"event: hop\ndata: " + json.dumps(data).encode() + b"\n\n"
        assert isinstance(item, bytes)
        return item

    async def runs_event(self) -> bytes:
        """The runs listed now, as a ``runs`` event."""
        runs = await self._source.run_dicts()
        return _runs_event(runs)

    async def _watch_runs(self) -> None:
        while True:
            await asyncio.sleep(RUNS_INTERVAL_SECONDS)
            if not self.clients:
                continue
            try:
                runs = await self._source.run_dicts()
            except Stopped:  # not started yet, or stopping
                continue
            except Exception:  # a backend that fails now: say so, try again next time
                log.exception("control plane: listing the runs failed")
                continue
            key = json.dumps(
                [{k: v for k, v in run.items() if k not in _CHANGING} for run in runs],
                sort_keys=True, default=str,
            )  # fmt: skip
            if key == self._runs_key:
                continue
            self._runs_key = key
            event = _runs_event(runs)
            for client in self.clients:
                if len(client.queue) < self.client_buffer:
                    client.queue.append(event)
                    client.wake.set()
                else:
                    self._overflow(client)


def _runs_event(runs: list[dict[str, Any]]) -> bytes:
    return b"event: runs\ndata: " + json.dumps(runs, default=str).encode() + b"\n\n"


async def stream(hub: EventHub, client: EventClient, send: Callable[[bytes], Any]) -> None:
    """Send ``client``'s queue as it fills until cancelled (the client left, was dropped, or
    the control plane stops)."""
    queue = client.queue
    while True:
        while queue:
            item = queue.popleft()
            await send(hub.encode(item))
            client.sent += 1
        client.wake.clear()
        if not queue:
            await client.wake.wait()
