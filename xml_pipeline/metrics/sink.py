"""The `Sink` seam: where batches of records go, and what they are told of their organism.

A sink is started once, written to by one task (its lane) a batch at a time, and closed once.
``write`` may raise: the lane retries with capped backoff, then dead-letters the batch. A sink
never sees the hot path: the pump only appends to the collector's buffer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from xml_pipeline.metrics.records import Batch

__all__ = ["Sink", "SinkContext", "SinkStats"]


@dataclass(frozen=True, slots=True)
class SinkStats:
    """One sink's counters, in records (hop events, conversation events, samples).

    ``submitted == flushed + dropped + dead_lettered + depth`` at every moment.

    Attributes:
        sink: its name (``prometheus``, ``jsonl``...; ``jsonl#2`` for a second of a type).
        target: where it writes.
        state: ``running``, ``retrying`` (a batch failed and is retried), ``failing`` (it
            has failed for longer than ``retry_seconds``: each batch gets one try, then goes
            to the dead letters), ``starting`` (``required: false`` and it could not start
            yet), ``stopped``.
        submitted: records meant for it since the collector started.
        flushed: records it wrote.
        dropped: records it never got: the collector's buffer or its own queue was full, or
            the organism stopped before it wrote them.
        retried: writes tried again after a failure.
        dead_lettered: records of batches it gave up on (see ``metrics.dead_letter``).
        depth: records waiting for it now (in the collector's buffer and its queue).
        last_flush_at: when it last wrote a batch (seconds since the epoch), or None.
        last_flush_seconds: how long that write took, or None.
        last_error: the last failure (start or write), or "".
    """

    sink: str
    target: str
    state: str
    submitted: int
    flushed: int
    dropped: int
    retried: int
    dead_lettered: int
    depth: int
    last_flush_at: float | None
    last_flush_seconds: float | None
    last_error: str


@runtime_checkable
class Sink(Protocol):
    """Where the collector's batches go."""

    @property
    def target(self) -> str:
        """Where it writes, for people (an URL, a path, a stream): used in every message."""
        ...

    @property
    def aggregates(self) -> bool:
        """True when it reads `Batch.summary` (counts), False when it reads `Batch.rows`."""
        ...

    async def start(self) -> None:
        """Open what it writes to (bind a port, open a file, connect).

        Raises:
            Exception: it cannot start; the collector names it and fails, or retries it.
        """
        ...

    async def write(self, batch: Batch) -> None:
        """Write one batch.

        Raises:
            Exception: it failed; the lane retries the batch, then dead-letters it.
        """
        ...

    async def aclose(self) -> None:
        """Release what `start` opened (called once, also when `start` failed)."""
        ...


class SinkContext:
    """What a sink may need to know of its organism."""

    def __init__(
        self,
        organism: str,
        redis_url: str,
        stats: Callable[[], Mapping[str, SinkStats]],
    ) -> None:
        self.organism = organism
        self.redis_url = redis_url  # the backend's, for redis_stream sinks without a url
        self.stats = stats  # the collector's own counters, read live (Prometheus exposes them)
