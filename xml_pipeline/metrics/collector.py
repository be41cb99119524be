"""The metrics collector (`Organism.metrics`): never blocks the pump, batches, says what it lost.

The hot path is one call per event: the collector's subscriber appends the hook's event (a named
tuple, already built) to a list, or counts it as dropped when ``buffer`` records are held; it
never awaits and takes no lock (everything runs on the event loop's thread). A full batch wakes
the flush task; otherwise it runs every ``flush_interval_seconds``, and then also samples the
organism (its counters, each listener's slots in use and backlog, the registry's size and how
long reading it took, the pool, dead letters). A flush cuts the buffer into batches and offers
each to every sink's lane (`SinkLane`), which writes it in a task of its own: a slow, failing or
blocked sink fills its own queue, never the pump's time or another sink's. Stopping flushes
what is buffered and gives the sinks ``shutdown_timeout_seconds`` to write it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xml_pipeline._errors import SinkError
from xml_pipeline._runtime.hooks import ConversationEvent, Event, Hooks
from xml_pipeline._runtime.outcomes import PumpStats
from xml_pipeline._runtime.pool import PoolStats
from xml_pipeline._runtime.recovery import ListenerRecovery
from xml_pipeline._settings import defaults
from xml_pipeline.metrics.factory import open_sink
from xml_pipeline.metrics.lane import DeadLetters, SinkLane
from xml_pipeline.metrics.records import Batch, Sample, Summary, rows_of
from xml_pipeline.metrics.settings import MetricsConfig, SinkSettings, TracingConfig
from xml_pipeline.metrics.sink import SinkContext, SinkStats
from xml_pipeline.metrics.tally import HopCounts
from xml_pipeline.metrics.trace import Trace, TraceRecorder

__all__ = ["MetricsCollector", "Probes"]

log = logging.getLogger("xml_pipeline.metrics")

# what a sink object given in code has when it lacks the attribute: a sink config's defaults
_SINK = defaults(SinkSettings)

_PROBE_SECONDS = 1.0  # the registry's size is read at most this long per sample


def _no_recovery() -> Mapping[str, ListenerRecovery]:
    return {}


def _kind(sink: object) -> str:
    """A sink's name before numbering: its type, or a sink object's ``name``."""
    if isinstance(sink, SinkSettings):
        return sink.type
    return str(getattr(sink, "name", type(sink).__name__))


@dataclass(frozen=True, slots=True)
class Probes:
    """What the collector reads of its organism when it samples (never per hop).

    ``recovery`` gives each listener's `ListenerRecovery` (retries, recovered, exhausted,
    circuit state and rejections, compensations): sinks expose it (Prometheus:
    ``xml_pipeline_listener_circuit_state``, ``xml_pipeline_listener_recovered_total``...).
    """

    listeners: frozenset[str]
    cpu_bound: frozenset[str]
    pool_workers: int
    stats: Callable[[], PumpStats]
    open_conversations: Callable[[], int]
    listener_load: Callable[[], list[tuple[str, int, int, int]]]
    registry_size: Callable[[], Awaitable[int]]
    pool_stats: Callable[[], PoolStats | None]
    dead_letters: Callable[[], Awaitable[int]]
    recovery: Callable[[], Mapping[str, ListenerRecovery]] = field(default=_no_recovery)


class MetricsCollector:
    """An organism's metrics and traces: the hook's subscriber, the buffer, the sinks' lanes.

    Made by `Organism` when its file has a ``metrics:`` or ``tracing:`` section (and never
    otherwise: nothing is then subscribed or allocated per hop). Read it as `Organism.metrics`.
    """

    def __init__(
        self,
        config: MetricsConfig,
        tracing: TracingConfig | None,
        *,
        organism: str,
        probes: Probes,
        redis_url: str,
    ) -> None:
        self.config = config
        self.organism = organism
        self._probes = probes
        self._buffer: list[object] = []
        self._lost = 0  # records dropped because the buffer was full
        self.received = 0  # records handed to the sinks' lanes (and the recorder)
        self._wake = asyncio.Event()
        self._recorder = None if tracing is None else TraceRecorder(tracing, probes.cpu_bound)
        self._spans: Any = None
        if tracing is not None and tracing.otel:
            from xml_pipeline.metrics.otel_trace import SpanWriter

            self._spans = SpanWriter(organism, tracing.tracer_provider, tracing.conversations)
        self._dead_letters = DeadLetters(config.dead_letter)
        context = SinkContext(organism, redis_url, self.stats)
        kinds = [_kind(sink) for sink in config.sinks]
        names = Counter(kinds)
        seen: Counter[str] = Counter()
        self._lanes: list[SinkLane] = []
        for sink, kind in zip(config.sinks, kinds, strict=True):
            seen[kind] += 1
            name = kind if names[kind] == 1 else f"{kind}#{seen[kind]}"
            self._lanes.append(
                SinkLane(
                    name,
                    open_sink(sink, context) if isinstance(sink, SinkSettings) else sink,
                    capacity=config.buffer,
                    retry_seconds=getattr(sink, "retry_seconds", _SINK["retry_seconds"]),
                    required=getattr(sink, "required", _SINK["required"]),
                    dead_letters=self._dead_letters,
                )
            )
        aggregating = [getattr(lane.sink, "aggregates", False) for lane in self._lanes]
        self._aggregating = [lane for lane, a in zip(self._lanes, aggregating, strict=True) if a]
        self._keeping = [lane for lane, a in zip(self._lanes, aggregating, strict=True) if not a]
        # every sink aggregates and nothing traces: count at the source, keep no events
        self._counts: HopCounts | None = None
        if self._aggregating and not self._keeping and self._recorder is None:
            self._counts = HopCounts(config.buffer, config.batch_size, self._wake)
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._running = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self, hooks: Hooks) -> None:
        """Start the sinks and subscribe to ``hooks``.

        Raises:
            SinkError: a sink with ``required: true`` cannot start (named, with the cause).
        """
        try:
            for lane in self._lanes:
                try:
                    await lane.start()
                except Exception as exc:
                    lane.last_error = f"cannot start: {type(exc).__name__}: {exc}"
                    if lane.required:
                        raise SinkError(
                            f"metrics sink {lane.name} ({lane.target}) cannot start: "
                            f"{type(exc).__name__}: {exc}; fix it, or set required: false on "
                            "the sink to start without it and retry it in the background",
                            sink=lane.name,
                        ) from exc
                    log.warning(
                        "metrics sink %s (%s) %s; the organism starts without it and retries",
                        lane.name, lane.target, lane.last_error,
                    )  # fmt: skip
        except BaseException:
            for lane in self._lanes:  # each sink is closed, started or not
                await lane.stop(asyncio.get_running_loop().time())
            raise
        loop = asyncio.get_running_loop()
        for lane in self._lanes:
            lane.task = loop.create_task(lane.run(), name=f"metrics sink {lane.name}")
        self._tasks.append(loop.create_task(self._flush_loop(), name="metrics flush"))
        counts = self._counts
        if counts is not None:
            stop_events = hooks.subscribe(counts.event, started=False, hops=False)
            stop_tally = hooks.count_hops(counts.hop)

            def unsubscribe() -> None:
                stop_tally()
                stop_events()

            self._unsubscribe = unsubscribe
        else:
            started = self._recorder is not None
            self._unsubscribe = hooks.subscribe(self._subscriber(), started=started)
        self._running = True

    def _subscriber(self) -> Callable[[Event], None]:
        """The hot path: append the event, or count it as dropped; wake the flush task when
        a batch is full. Without tracing it does not ask for ``started`` events (metrics count
        hops when they finish), so the pump does not build them."""
        buffer = self._buffer
        capacity = self.config.buffer
        batch_size = self.config.batch_size
        wake = self._wake
        append = buffer.append
        collector = self

        def count(event: Event) -> None:
            n = len(buffer)
            if n < capacity:
                append(event)
                if n + 1 == batch_size:
                    wake.set()
            else:
                collector._lost += 1

        if self._spans is None:
            return count
        opened = self._spans.opened

        def count_and_join(event: Event) -> None:
            # OTel spans: the parent of a conversation is read as it opens, in its task
            if type(event) is ConversationEvent and event.kind == "opened":
                opened(event)
            count(event)

        return count_and_join

    async def aclose(self) -> None:
        """Stop observing, flush what is buffered (a last sample included) and give the sinks
        ``shutdown_timeout_seconds`` to write it; what is left is counted as dropped."""
        if not self._running:
            return
        self._running = False
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        await asyncio.wait(self._tasks)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout_seconds
        try:
            await asyncio.wait_for(self._sample(), timeout=self.config.shutdown_timeout_seconds)
        except (TimeoutError, Exception) as exc:  # stopping must finish whatever failed
            log.warning("metrics: the last sample could not be taken: %r", exc)
        self._distribute()
        if self._lanes:
            await asyncio.gather(*(lane.stop(deadline) for lane in self._lanes))

    # -- what users read ------------------------------------------------------------------------

    def stats(self) -> dict[str, SinkStats]:
        """Each sink's counters now, by sink name (``prometheus``, ``jsonl``, ``jsonl#2``...).

        ``submitted == flushed + dropped + dead_lettered + depth`` for each.
        """
        pending, lost = self.depth, self.dropped
        return {lane.name: lane.stats(pending, lost) for lane in self._lanes}

    def exposition(self) -> tuple[bytes, str] | None:
        """The Prometheus exposition (text, content type) of a ``prometheus`` sink without
        ``listen:`` (the control plane serves it on its ``/metrics``); None without one. Its
        counters are those of the last flush (every ``flush_interval_seconds``, or `flush`)."""
        for lane in self._lanes:
            if getattr(lane.sink, "served_by_control", False):
                found: tuple[bytes, str] = lane.sink.exposition()  # type: ignore[attr-defined]
                return found
        return None

    @property
    def dropped(self) -> int:
        """Records dropped because the buffer was full (each sink counts them too)."""
        return self._lost + (0 if self._counts is None else self._counts.lost)

    @property
    def depth(self) -> int:
        """Records in the buffer now (or counted at the source), not yet cut into batches."""
        return len(self._buffer) + (0 if self._counts is None else self._counts.held)

    async def flush(self, timeout: float = 5.0) -> bool:
        """Sample the organism now, hand everything buffered to the sinks and wait at most
        ``timeout`` seconds until each has written its queue (a failing one may be retrying).

        Returns:
            True when every sink's queue is empty.
        """
        await self._sample()
        self._distribute()
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while any(not lane.idle for lane in self._lanes) and loop.time() < until:
            await asyncio.sleep(0.01)
        return all(lane.idle for lane in self._lanes)

    def trace(self, conversation: str) -> Trace | None:
        """The recorded trace of ``conversation``, or None (not recorded, or tracing off)."""
        if self._recorder is None:
            return None
        self._distribute()  # what the buffer holds goes to the recorder first
        return self._recorder.trace(conversation)

    def traced_conversations(self) -> list[str]:
        """The ids of the conversations whose trace is kept (oldest first; empty with tracing
        off): what `trace` can answer, for finding an id by its prefix."""
        if self._recorder is None:
            return []
        self._distribute()
        return self._recorder.conversations()

    @property
    def tracing(self) -> TracingConfig | None:
        """The tracing settings, or None when tracing is off."""
        return None if self._recorder is None else self._recorder.config

    # -- the flush task -------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.flush_interval_seconds
        next_sample = loop.time() + interval
        wake = self._wake
        while True:
            remaining = next_sample - loop.time()
            if remaining > 0 and not wake.is_set():
                try:
                    async with asyncio.timeout(remaining):
                        await wake.wait()
                except TimeoutError:
                    pass
            wake.clear()
            if loop.time() >= next_sample:
                await self._sample()
                next_sample = loop.time() + interval
            self._distribute()

    async def _sample(self) -> None:
        probes = self._probes
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            async with asyncio.timeout(_PROBE_SECONDS):
                records: int | None = await probes.registry_size()
            took: float | None = loop.time() - began
        except Exception:  # a backend that is down or slow: say so, do not stop
            records = took = None
        try:
            async with asyncio.timeout(_PROBE_SECONDS):
                letters: int | None = await probes.dead_letters()
        except Exception:
            letters = None
        load = probes.listener_load()
        recovery = probes.recovery()
        sample = Sample(
            "sample",
            time.perf_counter(),
            probes.stats(),
            probes.open_conversations(),
            tuple(load),
            records,
            took,
            probes.pool_workers,
            sum(busy for name, busy, _, _ in load if name in probes.cpu_bound),
            probes.pool_stats(),
            letters,
            tuple((name, r.circuit) for name, r in sorted(recovery.items()) if r.circuit),
            tuple(sorted(recovery.items())),
        )
        if self._counts is not None:
            self._counts.add_sample(sample)
        elif len(self._buffer) < self.config.buffer:
            self._buffer.append(sample)
        else:
            self._lost += 1

    def _write_spans(self, rows: list[Any]) -> None:
        """Write the conversations that ended in ``rows`` as OpenTelemetry spans."""
        assert self._recorder is not None
        for row in rows:
            if row[0] == "ended" and (found := self._recorder.trace(row[1])) is not None:
                try:
                    self._spans.write(found)
                except Exception:  # a tracer that fails must not stop the flush
                    log.exception("metrics: writing the spans of %s failed", row[1])

    def _distribute(self) -> None:
        """Cut the buffer into batches and hand them to the recorder and every lane."""
        if self._counts is not None:
            taken = self._counts.take(self._probes.listeners)
            if taken is not None:
                held, counted = taken
                self.received += held
                wall = time.time() - time.perf_counter()
                batch = Batch(self.organism, held, wall, None, counted)
                for lane in self._lanes:
                    lane.offer(batch)
            return
        buffer = self._buffer
        if not buffer:
            return
        events = buffer.copy()
        buffer.clear()
        self.received += len(events)
        wall = time.time() - time.perf_counter()  # events are stamped with perf_counter
        size = self.config.batch_size
        recorder, keeping, aggregating = self._recorder, self._keeping, self._aggregating
        listeners = self._probes.listeners
        for at in range(0, len(events), size):
            chunk = events[at : at + size]
            count = len(chunk)
            rows = None
            if recorder is not None:
                traced = rows_of(chunk, started=True)
                recorder.add(traced, wall)
                if self._spans is not None:
                    self._write_spans(traced)
                rows = [row for row in traced if row[0] != "started"]
                count = len(rows)
                if not keeping:
                    rows = None
            elif keeping:
                rows = rows_of(chunk, started=False)
            if not self._lanes:
                continue
            summary = Summary.of(chunk, listeners) if aggregating else None
            batch = Batch(self.organism, count, wall, rows, summary)
            for lane in self._lanes:
                lane.offer(batch)
