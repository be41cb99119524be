"""A sink's lane: its own bounded queue and task, retries with capped backoff, dead letters.

Each sink gets one lane, so a sink that is slow, failing or blocked for good holds up nothing
but its own queue: when that queue is full, new batches for it are dropped and counted, and the
other sinks (and the pump, which never waits for any of this) go on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from pathlib import Path

import anyio

from xml_pipeline.metrics.records import Batch
from xml_pipeline.metrics.sink import Sink, SinkStats

__all__ = ["DeadLetters", "SinkLane"]

log = logging.getLogger("xml_pipeline.metrics")

BACKOFF = (0.1, 5.0)  # seconds: the first wait after a failure, and the most
_CLOSE_SECONDS = 2.0  # how long a sink's aclose may take when the organism stops


class DeadLetters:
    """Where batches a sink gave up on go: a JSON Lines file (one line per batch, with the
    sink, the error and the records), or, without a file, a warning in the log.

    Attributes:
        path: the file, or None.
        batches: batches dead-lettered so far (all sinks).
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.batches = 0

    async def put(
        self, sink: str, target: str, error: str, batch: Batch, *, tell: bool = True
    ) -> None:
        """Keep ``batch``, which ``sink`` failed to write with ``error``; ``tell``: log it at
        WARNING (the first of a run of failures), else at DEBUG."""
        self.batches += 1
        say = log.warning if tell else log.debug
        if self.path is None:
            say(
                "metrics sink %s (%s) gave up on %d records: %s; they are dropped (set "
                "metrics.dead_letter to a file to keep them)", sink, target, len(batch), error,
            )  # fmt: skip
            return
        line = json.dumps(
            {"sink": sink, "target": target, "error": error, "time": time.time(),
             "records": batch.json_rows()},
            default=str,
        )  # fmt: skip
        try:
            await anyio.to_thread.run_sync(_append, self.path, line, abandon_on_cancel=True)
        except OSError as exc:
            log.error(
                "metrics sink %s gave up on %d records (%s) and the dead-letter file %s cannot "
                "be written (%s); the records are lost", sink, len(batch), error, self.path, exc,
            )  # fmt: skip
        else:
            say(
                "metrics sink %s (%s) gave up on %d records: %s; written to %s (further "
                "batches too, until it writes again)",
                sink, target, len(batch), error, self.path,
            )  # fmt: skip


def _append(path: str, line: str) -> None:
    with Path(path).open("a", encoding="utf-8") as file:
        file.write(line + "\n")


class SinkLane:
    """One sink's queue (at most ``capacity`` records) and the task that writes it out."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        *,
        capacity: int,
        retry_seconds: float,
        required: bool,
        dead_letters: DeadLetters,
    ) -> None:
        self.name = name
        self.sink = sink
        self._capacity = capacity
        self._retry_seconds = retry_seconds
        self.required = required
        self._dead_letters = dead_letters
        self._queue: deque[Batch] = deque()
        self.queued = 0  # records in the queue, the batch being written included
        self._wake = asyncio.Event()
        self._closing = False
        self.started = False
        self.state = "starting"
        self.offered = self.flushed = self.dropped = self.retried = self.dead_lettered = 0
        self.last_flush_at: float | None = None
        self.last_flush_seconds: float | None = None
        self.last_error = ""
        self.task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None  # loop clock of the first failure in a row
        self._told = False  # the dead letters of this run of failures were logged

    def stats(self, pending: int, lost: int) -> SinkStats:
        """The counters now; ``pending`` records wait in the collector's buffer and ``lost``
        were dropped there (both count for every sink)."""
        return SinkStats(
            sink=self.name,
            target=self.target,
            state=self.state,
            submitted=self.offered + pending + lost,
            flushed=self.flushed,
            dropped=self.dropped + lost,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            depth=self.queued + pending,
            last_flush_at=self.last_flush_at,
            last_flush_seconds=self.last_flush_seconds,
            last_error=self.last_error,
        )

    @property
    def target(self) -> str:
        """Where the sink writes (its name for a sink object without ``target``)."""
        return str(getattr(self.sink, "target", self.name))

    @property
    def idle(self) -> bool:
        """Nothing queued for it."""
        return self.queued == 0

    async def start(self) -> None:
        """Start the sink now.

        Raises:
            Exception: what the sink raised.
        """
        await self.sink.start()
        self.started = True
        self.state = "running"

    def offer(self, batch: Batch) -> None:
        """Queue ``batch`` for the sink, or drop it (counted) when the queue is full."""
        size = len(batch)
        self.offered += size
        if self.queued + size > self._capacity:
            self.dropped += size
            return
        self._queue.append(batch)
        self.queued += size
        self._wake.set()

    def close(self) -> None:
        """Write what is queued, then end (see `run`)."""
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        """Start the sink if it has not started (retrying with backoff), then write batches
        as they come until `close` and an empty queue."""
        delay = BACKOFF[0]
        while not self.started:
            try:
                await self.start()
            except Exception as exc:
                self.last_error = f"cannot start: {type(exc).__name__}: {exc}"
                log.warning(
                    "metrics sink %s (%s) %s; retrying in %.1f s", self.name, self.target,
                    self.last_error, delay,
                )  # fmt: skip
                if self._closing:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
        queue = self._queue
        while True:
            while not queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
            batch = queue[0]
            await self._write(batch)
            queue.popleft()
            self.queued -= len(batch)

    async def _write(self, batch: Batch) -> None:
        """Write ``batch``, retrying with capped backoff while the sink has been failing for
        less than ``retry_seconds``; past that, a batch gets one try and then goes to the dead
        letters, so a sink that stays down drains its queue instead of holding it."""
        loop = asyncio.get_running_loop()
        delay = BACKOFF[0]
        while True:
            began = time.perf_counter()
            try:
                await self.sink.write(batch)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                now = loop.time()
                if self._failing_since is None:
                    self._failing_since = now
                if now + delay > self._failing_since + self._retry_seconds:
                    self.dead_lettered += len(batch)
                    self.state = "failing"
                    await self._dead_letters.put(
                        self.name, self.target, self.last_error, batch, tell=not self._told
                    )
                    self._told = True
                    return
                self.state = "retrying"
                self.retried += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            self.flushed += len(batch)
            self.last_flush_seconds = time.perf_counter() - began
            self.last_flush_at = time.time()
            self.state = "running"
            self._failing_since = None
            self._told = False
            return

    async def stop(self, deadline: float) -> None:
        """Let the lane write what is queued until ``deadline`` (loop clock), then cancel it;
        what is left is counted as dropped. Closes the sink."""
        self.close()
        task = self.task
        loop = asyncio.get_running_loop()
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=max(0.0, deadline - loop.time()))
            if not task.done():
                task.cancel()
                await asyncio.wait([task], timeout=0.25)  # a sink that ignores it is left
        if self.queued:
            log.warning(
                "metrics sink %s (%s) had %d records left when the organism stopped; dropped",
                self.name, self.target, self.queued,
            )  # fmt: skip
            self.dropped += self.queued
            self.queued = 0
            self._queue.clear()
        self.state = "stopped"
        try:
            with anyio.move_on_after(_CLOSE_SECONDS):
                await self.sink.aclose()
        except Exception as exc:
            log.warning("metrics sink %s (%s) failed to close: %s", self.name, self.target, exc)
