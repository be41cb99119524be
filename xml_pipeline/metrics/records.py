"""What flows from the hook to the sinks: events and samples in, batches out.

The collector's subscriber keeps the hook's events as they are (named tuples: nothing is built
per hop). When a batch is cut, its events become what the sinks read, once for all of them:

- a `Summary` for sinks that aggregate (Prometheus, OpenTelemetry): counts per listener and
  reason, handler durations, conversation outcomes and the newest `Sample`;
- rows for sinks that keep records (JSON Lines, a Redis stream, the trace recorder): each event
  as a plain tuple without the payload object (its tag instead), so a queue held by a slow sink
  keeps no payload alive.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple

from xml_pipeline._runtime.outcomes import PumpStats
from xml_pipeline._runtime.pool import PoolStats
from xml_pipeline._runtime.recovery import ListenerRecovery
from xml_pipeline._wire.payloads import is_payload, payload_spec

__all__ = [
    "DURATION_BUCKETS",
    "STATS_METRICS",
    "Batch",
    "Row",
    "Sample",
    "Summary",
    "payload_tag",
    "process_name",
    "row_to_json",
    "rows_of",
]

# A row: a HopEvent's fields with the payload replaced by its tag, a ConversationEvent's, or
# ("sample", Sample). Indices of hop rows are those of HopEvent.
Row = tuple[Any, ...]

_TAGS: dict[type, str] = {}


def payload_tag(payload: object) -> str:
    """The XML tag of a payload object (its class name for anything else)."""
    cls = type(payload)
    tag = _TAGS.get(cls)
    if tag is None:
        tag = payload_spec(cls).tag if is_payload(payload) else cls.__name__
        _TAGS[cls] = tag
    return tag


def process_name() -> str:
    """``host:pid`` of this process, as traces and records name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Sample(NamedTuple):
    """The organism's state at one moment, read by the collector's sampler (never per hop).

    Attributes:
        kind: ``"sample"``.
        at: ``time.perf_counter()`` (seconds), the clock of the hook's events.
        stats: the organism's counters (`Organism.stats`).
        open_conversations: conversations open now.
        listeners: ``(listener, busy, backlog, limit)`` each: slots in use, hops waiting,
            ``max_concurrency``.
        registry_records: live records in the backend (``None``: the backend did not answer).
        backend_seconds: how long that read took (a probe of the backend's latency).
        pool_workers: worker processes (0 without a pool).
        pool_busy: slots of ``cpu_bound`` listeners in use: calls running in the pool.
        pool: the pool's counters, or ``None`` without a pool.
        dead_letters: dead letters kept (`Organism.dead_letters`), or ``None`` when the
            backend did not answer.
        circuits: ``(listener, state)`` of each listener with a circuit breaker.
        recovery: ``(listener, ListenerRecovery)`` of every listener (`recovery_status`).
    """

    kind: str
    at: float
    stats: PumpStats
    open_conversations: int
    listeners: tuple[tuple[str, int, int, int], ...]
    registry_records: int | None
    backend_seconds: float | None
    pool_workers: int
    pool_busy: int
    pool: PoolStats | None
    dead_letters: int | None
    circuits: tuple[tuple[str, str], ...] = ()
    recovery: tuple[tuple[str, ListenerRecovery], ...] = ()


class Summary:
    """One batch's counts, for sinks that aggregate (each adds it to its totals)."""

    __slots__ = ("durations", "ended", "failures", "received", "retries", "sample", "sent")

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()  # payloads delivered to a listener's handler
        self.sent: Counter[str] = Counter()  # payloads a listener sent (calls and answers)
        self.failures: Counter[tuple[str, str]] = Counter()  # (listener, reason)
        self.retries: Counter[str] = Counter()
        self.durations: dict[str, list[float]] = {}  # listener -> handler seconds
        self.ended: Counter[str] = Counter()  # conversations by outcome ("answered" or reason)
        self.sample: Sample | None = None

    @classmethod
    def of(cls, events: Sequence[Any], listeners: frozenset[str]) -> Summary:
        """Count ``events`` (hook events and samples); ``listeners`` are the organism's own
        (senders from outside are not counted as sent). Counting is done by C loops
        (``Counter``, ``sorted``, ``itemgetter``): this runs for every hop's events."""
        summary = cls()
        finished = [e for e in events if e[0] == "finished"]
        answered = [e for e in events if e[0] == "answered"]
        received, sent = summary.received, summary.sent
        received.update(map(_LISTENER, finished))
        received.update(map(_LISTENER, answered))
        sent.update(s for s in map(_SENDER, finished) if s in listeners)
        sent.update(map(_SENDER, answered))
        pairs = sorted(map(_LISTENER_DURATION, finished))  # by listener, then duration
        durations = summary.durations
        for listener, group in groupby(pairs, key=_FIRST):
            durations[listener] = list(map(_SECOND, group))  # sorted already
        summary.failures.update(
            (e[4], e[9]) for e in finished if e[9] is not None and e[9] != "ended"
        )
        summary.retries.update(e[4] for e in finished if e[6] > 1)
        for event in events:
            kind = event[0]
            if kind == "ended":
                summary.ended[event[4] or "answered"] += 1
            elif kind == "sample":
                summary.sample = event
        return summary


_LISTENER = itemgetter(4)
_SENDER = itemgetter(3)
_LISTENER_DURATION = itemgetter(4, 8)
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


class Batch:
    """Up to ``batch_size`` records cut from the buffer, shared by every sink.

    ``rows`` are set when a sink or the trace recorder keeps records, ``summary`` when a sink
    aggregates. ``wall`` turns the clock of the records (``perf_counter``) into wall-clock time
    (``at + wall`` is seconds since the epoch).
    """

    __slots__ = ("organism", "process", "rows", "size", "summary", "wall")

    def __init__(
        self,
        organism: str,
        size: int,
        wall: float,
        rows: list[Row] | None,
        summary: Summary | None,
    ) -> None:
        self.organism = organism
        self.process = process_name()
        self.size = size
        self.wall = wall
        self.rows = rows
        self.summary = summary

    def __len__(self) -> int:
        return self.size

    def json_rows(self) -> list[dict[str, Any]]:
        """The records as JSON-ready mappings (`row_to_json`)."""
        rows = self.rows or []
        return [row_to_json(row, self.organism, self.wall, self.process) for row in rows]


def rows_of(events: Sequence[Any], *, started: bool) -> list[Row]:
    """Payload-free rows of hook events and samples; ``started`` keeps ``started`` events
    (the trace recorder wants them, sinks do not)."""
    rows: list[Row] = []
    append = rows.append
    for event in events:
        kind = event[0]
        if kind == "finished" or kind == "answered" or (started and kind == "started"):
            append((*event[:5], payload_tag(event[5]), *event[6:]))
        elif kind != "started":
            append(event)  # conversation events and samples hold no payload
    return rows


def row_to_json(row: Row, organism: str, wall: float, process: str) -> dict[str, Any]:
    """One record as a JSON-ready mapping; ``time`` is seconds since the epoch.

    Hop rows (``type`` ``hop`` or ``answer``) carry what `build_tree` needs to rebuild a trace.
    """
    kind = row[0]
    if kind in ("finished", "answered", "started"):
        found: dict[str, Any] = {
            "type": {"finished": "hop", "answered": "answer", "started": "hop_started"}[kind],
            "organism": organism,
            "time": row[7] + wall,
            "conversation": row[1],
            "thread": row[2],
            "caller_thread": row[10],
            "maker": None if row[11] is None else row[11] + wall,
            "sender": row[3],
            "listener": row[4],
            "payload": row[5],
            "attempt": row[6],
            "process": process,
        }
        if kind == "finished":
            found["duration_seconds"] = row[8]
            found["outcome"] = row[9]
        return found
    if kind in ("opened", "ended"):
        return {
            "type": "conversation",
            "event": kind,
            "organism": organism,
            "time": row[3] + wall,
            "conversation": row[1],
            "listener": row[2],
            "outcome": row[4],
            "process": process,
        }
    sample: Sample = row  # type: ignore[assignment]
    return {
        "type": "sample",
        "organism": organism,
        "time": sample.at + wall,
        "process": process,
        "stats": asdict(sample.stats),
        "open_conversations": sample.open_conversations,
        "listeners": {
            name: {"busy": busy, "backlog": backlog, "limit": limit}
            for name, busy, backlog, limit in sample.listeners
        },
        "registry_records": sample.registry_records,
        "backend_seconds": sample.backend_seconds,
        "pool_workers": sample.pool_workers,
        "pool_busy": sample.pool_busy,
        "pool": None if sample.pool is None else asdict(sample.pool),
        "dead_letters": sample.dead_letters,
        "circuits": dict(sample.circuits),
        "recovery": {name: asdict(counts) for name, counts in sample.recovery},
    }


def is_hop_record(record: Mapping[str, Any]) -> bool:
    """Whether a JSON record is a hop, an answer or a conversation event (what traces use)."""
    return record.get("type") in ("hop", "answer", "hop_started", "conversation")


# What each counter of `PumpStats` is called as a metric (Prometheus adds ``_total``; OTel
# reads the underscores after the prefix as dots), and what it means.
STATS_METRICS: dict[str, tuple[str, str]] = {
    "conversations": ("xml_pipeline_conversations", "conversations started"),
    "answered": ("xml_pipeline_conversations_answered", "conversations that ended answered"),
    "failed": ("xml_pipeline_conversations_failed", "conversations that ended failed"),
    "no_answer": ("xml_pipeline_conversations_no_answer", "failed: nothing could answer"),
    "lost": ("xml_pipeline_conversations_lost", "failed: lost to the backend or the pump"),
    "cancelled": ("xml_pipeline_conversations_cancelled", "requesters that stopped waiting"),
    "hops": ("xml_pipeline_hops", "handler runs started"),
    "handler_errors": ("xml_pipeline_handler_errors", "handler runs that raised"),
    "timeouts": ("xml_pipeline_timeouts", "handler runs and requests over their timeout"),
    "late_replies": ("xml_pipeline_late_replies", "answers on a retired thread, dropped"),
    "overloaded": ("xml_pipeline_ingress_overloaded", "ingress calls refused: organism full"),
    "rejected": ("xml_pipeline_ingress_rejected", "ingress calls refused for their input"),
    "abandoned": ("xml_pipeline_handlers_abandoned", "handlers that ignored cancellation"),
    "retries": ("xml_pipeline_retries", "hops run again by a retry policy"),
    "outcomes_dropped": ("xml_pipeline_outcomes_dropped", "send/inject outcomes nobody read"),
    "dead_lettered": ("xml_pipeline_dead_lettered", "dead letters recorded"),
    "dead_letters_lost": ("xml_pipeline_dead_letters_lost", "dead letters the backend lost"),
    "traceparents_ignored": (
        "xml_pipeline_traceparents_ignored",
        "envelopes whose malformed traceparent was ignored",
    ),
}
# upper bounds (seconds) of the handler duration histogram's buckets
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
)  # fmt: skip
