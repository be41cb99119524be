"""The event stream's pump side: hop events, counts and run-set changes fanned out to each client.

`EventHub` counts finished hops at the source for as long as the control plane runs: a
`HopTotals` registered with `Hooks.count_hops` (no event built), which ``/api/stats`` and the
``counts`` events read, so the counts are the same whether or not anybody watched. Only while
an event-stream client is connected does it subscribe to the hooks, for finished hops only (the
pump builds no ``started``, conversation or ``answered`` event for it); the last client leaving
unsubscribes. Per hop its subscriber appends the event, as the hook built it, to one list, and
the first hop of a loop iteration schedules a distribution (``call_soon``): no awaiting, no
lock, no JSON on the hop's time. A distribution encodes the batch once as server-sent events
(one ``%`` over the batch's fields) and queues that chunk for every client, in a queue bounded
in events (``control.client_buffer``). A client whose queue cannot take a batch loses it
(counted); one that has lost a whole queue's worth is disconnected (its cancel scope
cancelled), so a client that stops reading never slows the pump. A client's stream starts with
a ``counts`` event (the totals when it connected: every hop after it comes as a ``hop`` event);
every `RUNS_INTERVAL_SECONDS` a task queues a ``counts`` event when the totals changed (after
the hops they count) and compares the runs listed with the last ones sent and, when they
changed, queues a ``runs`` event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import string
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio

from xml_pipeline._runtime.hooks import Event, Hooks, HopEvent
from xml_pipeline.control.source import OrganismSource, Stopped
from xml_pipeline.metrics.tally import HopTotals

__all__ = ["RUNS_INTERVAL_SECONDS", "EventClient", "EventHub"]

log = logging.getLogger("xml_pipeline.control")

RUNS_INTERVAL_SECONDS = 0.5  # run-set changes are sent at most this often
_RUNS_SHARE = 0.02  # of the loop's time, listing runs for the event stream takes at most


class EventClient:
    """One connected event-stream client: its queue of encoded chunks, what it lost, its
    cancel scope."""

    __slots__ = ("dropped", "queue", "queued", "scope", "sent", "wake")

    def __init__(self) -> None:
        self.queue: deque[tuple[bytes, int]] = deque()  # (chunk, events in it)
        self.queued = 0  # events in the queue
        self.dropped = 0
        self.sent = 0
        self.wake = asyncio.Event()
        self.scope = anyio.CancelScope()


class EventHub:
    """Hop events, counts and run changes for the event-stream clients of one control plane."""

    def __init__(self, source: OrganismSource, *, client_buffer: int) -> None:
        self._source = source
        self.client_buffer = client_buffer
        self.clients: tuple[EventClient, ...] = ()
        self.totals = HopTotals()  # counted at the source, watched or not
        self.dropped = 0  # events dropped from full client queues, all clients
        self.disconnected = 0  # clients dropped for not reading
        self.served = 0  # clients ever connected
        self._pending: list[HopEvent] = []  # finished hops since the last distribution
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hooks: Hooks | None = None
        self._counts_key: tuple[int, int] | None = None  # (hops, failures) last sent
        self._runs_key: list[tuple[str, str, str, int]] | None = None
        self._runs_task: asyncio.Task[None] | None = None
        self._stop_tally: Callable[[], None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._prefixes: dict[tuple[str, str, str | None], str] = {}
        # hook events are stamped with perf_counter; clients get seconds since the epoch
        self._wall = time.time() - time.perf_counter()

    def start(self, hooks: Hooks) -> None:
        """Count finished hops from ``hooks`` and start the run-change task (hop events are
        subscribed to while a client is connected)."""
        self._loop = asyncio.get_running_loop()
        self._hooks = hooks
        self._stop_tally = hooks.count_hops(self.totals.hop)
        if self.clients:
            self._subscribe()
        self._runs_task = self._loop.create_task(self._watch_runs(), name="control plane: runs")

    async def aclose(self) -> None:
        """Stop counting, unsubscribe, stop the run-change task and end every client's
        stream."""
        if self._stop_tally is not None:
            self._stop_tally()
            self._stop_tally = None
        self._unsubscribe_hops()
        self._hooks = None
        task, self._runs_task = self._runs_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for client in self.clients:
            client.scope.cancel()

    def _subscribe(self) -> None:
        if self._unsubscribe is None and self._hooks is not None:
            self._unsubscribe = self._hooks.subscribe(
                self._subscriber(), started=False, conversations=False
            )

    def _unsubscribe_hops(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()
        self._pending.clear()  # nobody to send them to

    def _subscriber(self) -> Callable[[Event], None]:
        """The hot path: keep a finished hop's event; the first of a loop iteration schedules
        the distribution (encoding and queueing happen there, once per batch)."""
        hub = self
        append = self._pending.append
        distribute = self._distribute
        loop = self._loop
        assert loop is not None

        def on_event(event: Event) -> None:
            append(event)  # type: ignore[arg-type]  # subscribed to finished hop events only
            if not hub._scheduled:
                hub._scheduled = True
                loop.call_soon(distribute)

        return on_event

    def _distribute(self) -> None:
        """Queue the hops kept since the last call, encoded once, for every client (a client
        whose queue cannot take them loses them, counted)."""
        self._scheduled = False
        if not self._pending:
            return
        batch = self._pending.copy()
        self._pending.clear()
        if self.clients:
            self._queue(self._encode(batch), len(batch))

    def _queue(self, chunk: bytes, count: int) -> None:
        limit = self.client_buffer
        for client in self.clients:
            if client.queued < limit:  # room: the batch goes in whole (limit + a batch at most)
                client.queue.append((chunk, count))
                client.queued += count
                client.wake.set()
            else:
                self._overflow(client, count)

    def _overflow(self, client: EventClient, count: int) -> None:
        client.dropped += count
        self.dropped += count
        if client.dropped >= self.client_buffer:  # a whole queue lost: it does not read
            log.warning(
                "control plane: an event-stream client stopped reading; dropped after losing "
                "%d events (control.client_buffer)", client.dropped,
            )  # fmt: skip
            self.disconnected += 1
            self.remove(client)
            client.scope.cancel()

    def add(self) -> EventClient:
        """A new client: its queue starts with a ``counts`` event (the totals now); every hop
        that finishes from now on comes as a ``hop`` event after it (the first client
        subscribes the hub to hop events)."""
        if self.clients:
            self._distribute()  # hops finished before the counts: not this client's events
        client = EventClient()
        client.queue.append((self.counts_event(), 1))
        client.queued = 1
        self.clients = (*self.clients, client)
        self.served += 1
        self._subscribe()
        return client

    def remove(self, client: EventClient) -> None:
        """Stop queueing events for ``client`` (idempotent); when it was the last one, stop
        receiving hop events (the pump builds none for the control plane then)."""
        self.clients = tuple(c for c in self.clients if c is not client)
        if not self.clients:
            self._unsubscribe_hops()

    def stats(self) -> dict[str, Any]:
        """What the event stream did: clients, events dropped from full queues, clients
        disconnected for not reading."""
        return {
            "clients": len(self.clients),
            "served": self.served,
            "dropped": self.dropped,
            "disconnected": self.disconnected,
            "client_buffer": self.client_buffer,
            "queued": sum(c.queued for c in self.clients),
        }

    def listener_counts(self) -> dict[str, dict[str, int]]:
        """Finished hops and failures per listener since the control plane started (counted
        at the source: the same whether or not a client watched)."""
        return self.totals.listeners()

    def edge_counts(self) -> list[dict[str, Any]]:
        """Finished hops per (sender, listener) since the control plane started."""
        return self.totals.edge_list()

    def counts_event(self) -> bytes:
        """The totals now as a ``counts`` event: ``{"listeners": {name: {"hops", "failed"}},
        "edges": [{"from", "to", "hops"}]}``, as ``/api/stats`` has them."""
        totals = self.totals
        self._counts_key = (sum(totals.edges.values()), sum(totals.failures.values()))
        data = {"listeners": totals.listeners(), "edges": totals.edge_list()}
        return b"event: counts\ndata: " + json.dumps(data).encode() + b"\n\n"

    def _queue_counts(self) -> None:
        """Queue a ``counts`` event when the totals changed since the last one, after the hops
        they count (so a client that counts hop events on top of it counts none twice)."""
        totals = self.totals
        key = (sum(totals.edges.values()), sum(totals.failures.values()))
        if key != self._counts_key:
            self._distribute()
            self._queue(self.counts_event(), 1)

    def _prefix(self, listener: str, sender: str, outcome: str | None) -> str:
        """The start of a hop event, the same for every hop of a listener, caller, outcome."""
        found = self._prefixes[listener, sender, outcome] = (
            f'event: hop\ndata: {{"listener": {json.dumps(listener)}, '
            f'"caller": {json.dumps(sender)}, "outcome": {json.dumps(outcome or "ok")}, '
            '"conversation": "'
        )
        return found

    def _encode(self, batch: list[HopEvent]) -> bytes:
        """The hops as ``hop`` server-sent events (data: one JSON object each). This runs for
        every hop a client sees: the batch's fields go in one flat tuple, formatted by one
        ``%`` (the per-event work left is picking the fields)."""
        get, wall = self._prefixes.get, self._wall
        flat: list[Any] = []
        for e in batch:  # kind, conversation, thread, sender, listener, payload, attempt, at,
            prefix = get((e[4], e[3], e[9]))  # duration, outcome, ...
            if prefix is None:
                prefix = self._prefix(e[4], e[3], e[9])
            flat += (prefix, e[1], e[2], e[6], e[8], wall + e[7])
        # ids the organism makes are hex, which JSON takes as they are: checked once a batch
        # (translate deleting the safe bytes: a tenth of the time of str.isalnum)
        ids = "".join(flat[1::6] + flat[2::6])
        if not ids.isascii() or ids.encode().translate(None, _PLAIN_ID):
            for i in range(0, len(flat), 6):
                flat[i + 1] = json.dumps(flat[i + 1])[1:-1]
                flat[i + 2] = json.dumps(flat[i + 2])[1:-1]
        return ((_HOP_EVENT * len(batch)) % tuple(flat)).encode()

    async def runs_event(self) -> bytes:
        """The runs listed now, as a ``runs`` event."""
        runs = await self._source.run_dicts()
        return _runs_event(runs)

    async def _watch_runs(self) -> None:
        """Queue a ``counts`` event when the totals changed, and a ``runs`` event when the
        runs changed: at most every
        `RUNS_INTERVAL_SECONDS`, and at most `_RUNS_SHARE` of the loop's time (thousands of
        runs in flight take milliseconds to list and encode)."""
        loop = asyncio.get_running_loop()
        wait = RUNS_INTERVAL_SECONDS
        while True:
            await asyncio.sleep(wait)
            if not self.clients:
                continue
            self._queue_counts()
            began = loop.time()
            try:
                runs = await self._source.runs()
            except Stopped:  # not started yet, or stopping
                continue
            except Exception:  # a backend that fails now: say so, try again next time
                log.exception("control plane: listing the runs failed")
                continue
            key = [(r.run_id, r.status, r.progress, r.output_dropped + len(r.output)) for r in runs]
            if key != self._runs_key:
                self._runs_key = key
                self._queue(_runs_event([r.to_dict() for r in runs]), 1)
            wait = max(RUNS_INTERVAL_SECONDS, (loop.time() - began) / _RUNS_SHARE)


_PLAIN_ID = (string.ascii_letters + string.digits + "-_.:@").encode()  # bytes JSON takes as is
# the rest of a hop event after its prefix (`EventHub._prefix`): conversation, thread, attempt,
# duration and time (fixed to the ns and us: a shortest float repr takes twice as long)
_HOP_EVENT = '%s%s", "thread": "%s", "attempt": %d, "duration_seconds": %.9f, "at": %.6f}\n\n'


def _runs_event(runs: list[dict[str, Any]]) -> bytes:
    return b"event: runs\ndata: " + json.dumps(runs, default=str).encode() + b"\n\n"


async def stream(hub: EventHub, client: EventClient, send: Callable[[bytes], Any]) -> None:
    """Send ``client``'s queue as it fills until cancelled (the client left, was dropped, or
    the control plane stops): what is queued at each wake-up goes in one write."""
    queue = client.queue
    while True:
        if queue:
            chunks = []
            while queue:
                chunk, count = queue.popleft()
                client.queued -= count
                client.sent += count
                chunks.append(chunk)
            await send(b"".join(chunks))
            continue
        client.wake.clear()
        await client.wake.wait()
