"""Counting at the source: hops counted as they finish (a `HopTally`), no event built or kept.

Two tallies, registered with `Hooks.count_hops` (several count at once): `HopCounts` for the
metrics collector, `HopTotals` for the control plane's counters.

When every sink aggregates (Prometheus, OpenTelemetry metrics) and nothing traces, the collector
needs a batch's `Summary`, not its events. `HopCounts` is then the pump's `HopTally` (called
with a finished hop's fields, so no `HopEvent` is built) and a ``hops=False`` hook subscriber
(conversation and ``answered`` events, a few per conversation). Per hop it appends a duration
and a sender to lists; what is rare (failures, retries) is counted apart; the flush turns it
into the same `Summary` that `Summary.of` makes from events (`take`). Nothing measured is lost:
received and sent per listener, failures by reason, retries, the duration histogram,
conversations by outcome, samples.

Like the event buffer it replaces, it holds ``capacity`` records at most between flushes (new
ones are dropped and counted), and wakes the flush task when ``batch_size`` are held.

`HopTotals` keeps running totals since it started: finished hops per edge (sender ->
listener) and failures per listener, what the control plane's ``/api/stats`` and its console
show. Per hop: one counter bumped (two when it failed); the same whether or not anybody reads
the event stream, so the counts never depend on who watched.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable
from typing import Any

from xml_pipeline.metrics.records import Sample, Summary

__all__ = ["HopCounts", "HopTotals"]


class HopCounts:
    """Counts of finished hops, answers, conversations and samples since the last `take`."""

    __slots__ = (
        "_batch_size", "_capacity", "_wake", "answered", "durations", "ended", "failures", "held",
        "lost", "retries", "sample", "senders",
    )  # fmt: skip

    def __init__(self, capacity: int, batch_size: int, wake: asyncio.Event) -> None:
        self._capacity = capacity
        self._batch_size = batch_size
        self._wake = wake
        self.held = 0  # records counted since the last take (what the buffer would hold)
        self.lost = 0  # records dropped: ``capacity`` were held
        self._reset()

    def _reset(self) -> None:
        self.durations: dict[str, list[float]] = {}  # listener -> handler seconds
        self.senders: list[str] = []  # the sender of each finished hop
        self.failures: Counter[tuple[str, str]] = Counter()
        self.retries: Counter[str] = Counter()
        self.answered: list[tuple[str, str]] = []  # (listener, sender) of awaited answers
        self.ended: Counter[str] = Counter()
        self.sample: Sample | None = None

    def _admit(self) -> bool:
        held = self.held
        if held >= self._capacity:
            self.lost += 1
            return False
        self.held = held + 1
        if held + 1 == self._batch_size:
            self._wake.set()
        return True

    def hop(
        self, listener: str, sender: str, attempt: int, duration: float, outcome: str | None
    ) -> None:
        """The `HopTally`: one finished hop (the fields of its ``finished`` event)."""
        held = self.held  # _admit, written out: this runs for every hop
        if held >= self._capacity:
            self.lost += 1
            return
        self.held = held + 1
        if held + 1 == self._batch_size:
            self._wake.set()
        found = self.durations.get(listener)
        if found is None:
            found = self.durations[listener] = []
        found.append(duration)
        self.senders.append(sender)
        if outcome is not None and outcome != "ended":
            self.failures[listener, outcome] += 1
        if attempt > 1:
            self.retries[listener] += 1

    def event(self, event: Any) -> None:
        """The ``hops=False`` hook subscriber: ``answered`` and conversation events."""
        if not self._admit():
            return
        kind = event[0]
        if kind == "answered":
            self.answered.append((event[4], event[3]))
        elif kind == "ended":
            self.ended[event[4] or "answered"] += 1

    def add_sample(self, sample: Sample) -> None:
        """A sample of the organism (the newest one is what sinks show)."""
        if self._admit():
            self.sample = sample

    def take(self, listeners: Iterable[str]) -> tuple[int, Summary] | None:
        """What was counted since the last take, as `Summary.of` counts events, and how many
        records that was; None when nothing was. ``listeners`` are the organism's own
        (senders from outside are not counted as sent)."""
        held = self.held
        if not held:
            return None
        summary = Summary()
        received, sent = summary.received, summary.sent
        for listener, durations in self.durations.items():
            durations.sort()
            summary.durations[listener] = durations
            received[listener] += len(durations)
        by_sender = Counter(self.senders)
        for listener in listeners:
            if listener in by_sender:
                sent[listener] += by_sender[listener]
        received.update(listener for listener, _ in self.answered)
        sent.update(sender for _, sender in self.answered)
        summary.failures, summary.retries = self.failures, self.retries
        summary.ended, summary.sample = self.ended, self.sample
        self.held = 0
        self._reset()
        return held, summary


class HopTotals:
    """Finished hops per (sender, listener) and failures per listener, since it was made.

    Register `hop` with `Hooks.count_hops`. A failure is a finished hop with an outcome (a
    reason code, or ``"ended"``: the conversation ended while the handler ran).
    """

    __slots__ = ("edges", "failures")

    def __init__(self) -> None:
        self.edges: Counter[tuple[str, str]] = Counter()  # (sender, listener) -> hops
        self.failures: Counter[str] = Counter()  # listener -> failed hops

    def hop(
        self, listener: str, sender: str, attempt: int, duration: float, outcome: str | None
    ) -> None:
        """The `HopTally`: one finished hop (the fields of its ``finished`` event)."""
        self.edges[sender, listener] += 1
        if outcome is not None:
            self.failures[listener] += 1

    def listeners(self) -> dict[str, dict[str, int]]:
        """``{listener: {"hops": n, "failed": n}}`` for each listener that finished a hop,
        by name."""
        hops: Counter[str] = Counter()
        for (_, listener), count in self.edges.items():
            hops[listener] += count
        return {name: {"hops": hops[name], "failed": self.failures[name]} for name in sorted(hops)}

    def edge_list(self) -> list[dict[str, Any]]:
        """``[{"from": sender, "to": listener, "hops": n}]``, sorted by sender then listener."""
        return [
            {"from": sender, "to": listener, "hops": count}
            for (sender, listener), count in sorted(self.edges.items())
        ]
