"""``organism run``: answer envelopes from stdin or a file, each answer tagged with its line.

Part of the command line (`xml_pipeline.cli` parses the arguments and calls `run`); the library
never imports it. Envelopes are answered concurrently through `Organism.request_envelope`, no
more at once than the organism's ``ingress_limit`` (reading waits for room instead of failing):

- stdout: ``line N: <message ...>...</message>``, one line per answer as it comes (newlines
  inside it written ``&#10;``), N being the input line its envelope started on;
- stderr: ``line N: failed [reason] message`` for every envelope that got no answer, logs,
  the hop tree of each conversation with ``--trace``, and a summary at the end.

End of input waits for the answers still pending (each within ``--timeout``).

A first SIGINT (Ctrl-C) or SIGTERM stops the run gracefully: no more input is read, the
organism stops (`Organism.aclose`: what is in flight gets up to ``drain_timeout_seconds``, the
rest fails with ``shutdown`` and is kept as a dead letter), and the summary says how many lines
were read. Every line read is accounted for: answered on stdout, or failed with a reason on
stderr, and an envelope in flight that failed with ``shutdown`` is also kept as a dead letter.
Lines already taken from the input but not yet sent when the signal came (a line read only in
part too) fail with ``shutdown``, not kept: nothing ran for them. The input after them is left
unread. A second signal gives up on the pending answers (``cancelled``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import select
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup
from anyio.from_thread import BlockingPortal

from xml_pipeline._errors import DeliveryError, Reason, XmlInputError, XmlPipelineError
from xml_pipeline._organism import Organism
from xml_pipeline._runtime.outputs import no_route
from xml_pipeline._wire.envelope import envelope_bytes
from xml_pipeline._wire.framing import DocumentSplitter, Framed
from xml_pipeline._wire.payloads import from_xml, to_xml
from xml_pipeline.metrics.trace import LiveTraces

__all__ = [
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "RunOptions",
    "recovery_summary",
    "run",
]

log = logging.getLogger("xml_pipeline.cli")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PROGRESS_EVERY = 10.0  # seconds between progress lines while answers are pending
_SETTLE = 1.0  # seconds to wait for a conversation's last hop events before drawing it
_THREAD = re.compile(rb"<thread>([^<]*)</thread>")
_LINES_AHEAD = 64  # lines the reader thread reads before the loop takes them
_READ_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``organism run`` was asked to do.

    Attributes:
        to, send: one payload for one listener (``--to``/``--send``), else ``None``.
        source: the stream of envelopes (stdin or ``--file``) when not ``--send``.
        multiline: envelopes may span lines (``--file``); else one per line, or
            ``@listener <payload-xml>``.
        timeout: seconds to wait for each answer.
        trace: print each conversation's hop tree on stderr after its answer.
        organism_file: the organism file, named where the summary points at its dead letters.
    """

    timeout: float
    trace: bool = False
    to: str | None = None
    send: str | None = None
    source: BinaryIO | None = None
    multiline: bool = False
    organism_file: str = "FILE"


@dataclass
class _Tally:
    answered: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    pending: int = 0
    lines: int = 0  # taken from the input
    signal: str = ""  # the signal that stopped the run (SIGINT, SIGTERM)
    given_up: str = ""  # the second signal, which gave up on the pending answers

    def summary(self) -> str:
        failed = sum(self.failed.values())
        text = f"{self.answered} answered, {failed} failed"
        if failed:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.failed.items()))
            text += f" ({reasons})"
        return text


def _final_summary(org: Organism, options: RunOptions, tally: _Tally, *, reading: bool) -> str:
    """``done: ...``, or ``stopped by SIGTERM after reading N lines: ...; K conversations kept
    as dead letters (...)`` when a signal stopped the run."""
    if not tally.signal:
        return f"done: {tally.summary()}"
    read = f" after reading {tally.lines} lines" if reading else ""
    kept = org.stats.dead_lettered
    where = (
        f"organism dlq list {options.organism_file}"
        if org.dead_letters.durable
        else "in this process's memory backend: gone at exit"
    )
    return (
        f"stopped by {tally.signal}{read}: {tally.summary()}; "
        f"{kept} conversations kept as dead letters ({where})"
    )


def _exit_status(tally: _Tally) -> int:
    if tally.signal:
        return 128 + signal.Signals[tally.signal].value  # 130 SIGINT, 143 SIGTERM
    return EXIT_FAILED if tally.failed else EXIT_OK


def recovery_summary(org: Organism) -> list[str]:
    """A line per listener that retried, opened its circuit, compensated or failed a
    compensation in this run (nothing for the others), for the summary at exit."""
    lines = []
    for name, status in org.recovery_status().items():
        parts = []
        if status.retries:
            parts.append(
                f"{status.retries} retries ({status.recovered} recovered, "
                f"{status.exhausted} exhausted)"
            )
        if status.circuit not in (None, "closed") or status.circuit_rejections:
            parts.append(f"circuit {status.circuit}, {status.circuit_rejections} rejected")
        if status.compensations:
            parts.append(
                f"{status.compensations} compensations ({status.compensations_failed} failed)"
            )
        if parts:
            lines.append(f"recovery of {name!r}: " + "; ".join(parts))
    return lines


async def run(org: Organism, options: RunOptions) -> int:
    """Start ``org``, answer what ``options`` say, stop it; returns the exit status.

    Raises:
        XmlPipelineError: the organism could not start (e.g. its backend is unreachable).
    """
    tracer = LiveTraces() if options.trace else None
    if tracer is not None:
        org.hooks.subscribe(tracer.record)
    tally = _Tally()
    async with org:
        log.info("organism %r running with %d listeners", org.name, len(org.listeners))
        if options.to is not None and options.send is not None:
            await _send(org, options.to, options.send, options.timeout, tracer, tally)
            if not tally.signal:  # its answer or its error says it all
                return _exit_status(tally)
        else:
            assert options.source is not None
            await _answer_stream(org, options, options.source, tally, tracer)
    level = logging.WARNING if tally.failed or tally.signal else logging.INFO
    log.log(level, "%s", _final_summary(org, options, tally, reading=options.send is None))
    for line in recovery_summary(org):
        log.log(level, "%s", line)
    return _exit_status(tally)


class _Stopping:
    """What the first signal stops, what the second gives up on, and the organism's close.

    ``stop_reading`` is called once, at the first signal; ``give_up`` at the second.
    """

    def __init__(
        self,
        org: Organism,
        tally: _Tally,
        stop_reading: Callable[[], None],
        give_up: Callable[[], None],
    ) -> None:
        self._org = org
        self._tally = tally
        self._stop_reading = stop_reading
        self._give_up = give_up
        self._closed = anyio.Event()

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Handle SIGINT and SIGTERM for the block, and until the organism it stopped is
        closed."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, group)
            yield
            if self._tally.signal:
                await self._closed.wait()  # a second signal must still be handled meanwhile
            group.cancel_scope.cancel()

    async def _watch(self, group: TaskGroup) -> None:
        try:
            with anyio.open_signal_receiver(*_STOP_SIGNALS) as signals:
                await self._on_signals(signals, group)
        except NotImplementedError:  # no signal handlers on this platform: Ctrl-C stops at once
            return

    async def _on_signals(self, signals: AsyncIterator[int], group: TaskGroup) -> None:
        tally = self._tally
        async for signum in signals:
            name = signal.Signals(signum).name
            if not tally.signal:
                tally.signal = name
                self._stop_reading()
                log.warning(
                    "%s: stopping: no more input is read; the %d pending answers get up to %gs "
                    "(drain_timeout_seconds), then what is left is kept as dead letters; "
                    "send SIGINT (Ctrl-C) or SIGTERM again to give up on them",
                    name, tally.pending, self._org.drain_timeout_seconds,
                )  # fmt: skip
                group.start_soon(self._close)
            elif not tally.given_up:
                tally.given_up = name
                log.warning("%s again: giving up on %d pending answers", name, tally.pending)
                self._give_up()

    async def _close(self) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self._org.aclose()
        finally:
            self._closed.set()


class _Reading:
    """Whether the input is still read, and the wait for room a stop cuts short."""

    def __init__(self, reader: _LineReader) -> None:
        self.reader = reader
        self.stopped = False
        self.waiting: anyio.CancelScope | None = None

    def stop(self) -> None:
        """Read no more; what was already taken from the input still comes, to be reported."""
        self.stopped = True
        if self.waiting is not None:
            self.waiting.cancel()
        self.reader.stop()


async def _answer_stream(
    org: Organism, options: RunOptions, source: BinaryIO, tally: _Tally, tracer: LiveTraces | None
) -> None:
    limiter = anyio.Semaphore(org.ingress_limit)
    splitter = DocumentSplitter(org.limits) if options.multiline else None
    reader = _LineReader(source, longest=org.limits.max_bytes)
    state = _Reading(reader)

    async def submit(item: Framed, partial: bool = False) -> None:
        if not state.stopped:
            if item.error is not None:  # the input could not be cut into an envelope here
                _failed(item.line, item.error, tally)
                return
            acquired = False
            with anyio.CancelScope() as state.waiting:
                await limiter.acquire()  # no more in flight than the organism admits
                acquired = True
            state.waiting = None
            if acquired:
                tally.pending += 1
                work.start_soon(_answer, org, item, options, tally, tracer, limiter)
                return
        _failed(item.line, _not_sent(tally.signal, partial), tally)

    async with reader as lines, anyio.create_task_group() as watchers:
        reading, answering = anyio.CancelScope(), anyio.CancelScope()
        stopping = _Stopping(org, tally, state.stop, _give_up(reading, answering))
        watchers.start_soon(_progress, tally)
        async with stopping.watching():
            with answering:
                async with anyio.create_task_group() as work:
                    with reading:
                        async for line in lines:  # after a stop: the lines already taken
                            tally.lines += 1
                            partial = state.stopped and not line.endswith(b"\n")
                            if splitter is not None:
                                for item in splitter.feed(line):
                                    await submit(item)
                            elif text := line.strip():
                                await submit(Framed(tally.lines, text), partial)
                        if splitter is not None:
                            for item in splitter.close():
                                await submit(item)
                        if tally.pending and not state.stopped:
                            log.info("end of input; answers still pending: %d", tally.pending)
        watchers.cancel_scope.cancel()


def _give_up(reading: anyio.CancelScope, answering: anyio.CancelScope) -> Callable[[], None]:
    def give_up() -> None:
        reading.cancel()  # a backstop: a stopped reader ends at once anyway
        answering.cancel()

    return give_up


async def _answer(
    org: Organism,
    item: Framed,
    options: RunOptions,
    tally: _Tally,
    tracer: LiveTraces | None,
    limiter: anyio.Semaphore,
) -> None:
    """Answer one envelope: its answer on stdout, or its failure on stderr."""
    assert item.data is not None
    try:
        try:
            data = item.data
            if not options.multiline and data.startswith(b"@"):
                data = _at_line(org, data)
            answer = await org.request_envelope(data, timeout=options.timeout)
        except XmlPipelineError as exc:
            _failed(item.line, exc, tally, _note(item, exc, options.multiline))
            if tracer is not None:
                thread = exc.thread if isinstance(exc, DeliveryError) else None
                await _trace(tracer, item.line, tracer.conversation_of(thread))
            return
        except anyio.get_cancelled_exc_class():
            _failed(item.line, _cancelled(tally), tally)
            raise
        tally.answered += 1
        # one answer, one line: a line break in a value is written as a character reference
        out = b"line %d: %s\n" % (item.line, answer.replace(b"\n", b"&#10;"))
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.flush()
        if tracer is not None:
            found = _THREAD.search(answer)
            await _trace(tracer, item.line, found[1].decode() if found else None)
    finally:
        tally.pending -= 1
        limiter.release()


def _at_line(org: Organism, data: bytes) -> bytes:
    """``@listener <payload-xml>`` as an envelope from outside.

    Raises:
        DeliveryError: no such listener (``no_route``).
        XmlInputError, SchemaViolation: the payload is not one the listener takes.
    """
    name, _, xml = data[1:].partition(b" ")
    to = name.decode("utf-8", "replace")
    payload: object = from_xml(_listener_class(org, to), xml, limits=org.limits)
    return envelope_bytes("", to, "", to_xml(payload))


def _failed(line: int, exc: XmlPipelineError, tally: _Tally, note: str = "") -> None:
    tally.failed[str(exc.reason)] += 1
    print(f"line {line}: failed {exc}{note}", file=sys.stderr, flush=True)


def _note(item: Framed, exc: XmlPipelineError, multiline: bool) -> str:
    """What to add to the failure of an envelope the organism refused."""
    if not multiline:
        if exc.reason in (Reason.MALFORMED, Reason.NOT_AN_ENVELOPE):
            return " (a line is a v1 envelope, or '@listener <payload-xml>')"
    elif isinstance(exc, XmlInputError) and exc.line:
        # the guarded parser counts lines from the envelope's first line
        return f"; its line {exc.line} is line {item.first + exc.line - 1} of the input"
    return ""


def _cancelled(tally: _Tally) -> DeliveryError:
    signals = f"{tally.signal}, then {tally.given_up}" if tally.given_up else "a signal"
    return DeliveryError(f"given up on ({signals}) before its answer came", reason=Reason.CANCELLED)


def _not_sent(signal_name: str, partial: bool) -> DeliveryError:
    """The failure of what was taken from the input but not sent, the run being stopped."""
    what = "read only in part (its line end had not come)" if partial else "read"
    return DeliveryError(
        f"{what} as {signal_name} stopped the run; not sent (send it again)",
        reason=Reason.SHUTDOWN,
    )


async def _trace(tracer: LiveTraces, line: int, conversation: str | None) -> None:
    """Print a conversation's hop tree on stderr, then forget it."""
    if conversation is None:
        return
    sys.stderr.write(f"trace of line {line}: {await _drawn(tracer, conversation)}")
    sys.stderr.flush()


async def _drawn(tracer: LiveTraces, conversation: str) -> str:
    """A conversation's hop tree as `Trace.render` draws it (one line more for each hop),
    once its last hop events came; then forgotten."""
    await tracer.settled(conversation, _SETTLE)
    found = tracer.trace(conversation)
    tracer.forget(conversation)
    if found is None:
        return f"conversation {conversation}: no hops seen\n"
    return found.render() + "\n"


async def _send(
    org: Organism, to: str, send: str, timeout: float, tracer: LiveTraces | None, tally: _Tally
) -> None:
    """``--to``/``--send``: one payload; its answer's payload XML on stdout."""
    answering = anyio.CancelScope()
    async with _Stopping(org, tally, lambda: None, answering.cancel).watching():
        with answering:
            try:
                payload: object = from_xml(_listener_class(org, to), send, limits=org.limits)
                answer = await org.request(to, payload, timeout=timeout)
                print(to_xml(answer).decode(), flush=True)
                tally.answered += 1
            except XmlPipelineError as exc:
                print(f"error (--send): {exc}", file=sys.stderr, flush=True)
                tally.failed[str(exc.reason)] += 1
        if answering.cancelled_caught:
            given_up = _cancelled(tally)
            print(f"error (--send): {given_up}", file=sys.stderr, flush=True)
            tally.failed[str(given_up.reason)] += 1
    if tracer is not None:
        for conversation in tracer.conversations():
            sys.stderr.write(f"trace of --send: {await _drawn(tracer, conversation)}")


def _listener_class(org: Organism, name: str) -> type:
    for listener in org.listeners:
        if listener.name == name:
            return listener.payload_class
    raise no_route(name, [listener.name for listener in org.listeners])


async def _progress(tally: _Tally) -> None:
    """Say how far the run got, every few seconds while that changes."""
    said = ""
    while True:
        await anyio.sleep(_PROGRESS_EVERY)
        now = f"{tally.summary()}, {tally.pending} pending"
        if now != said:
            log.info("%s", now)
            said = now


class _LineReader:
    """The lines of a binary stream (with their line breaks), read by a daemon thread so that
    a read blocked on a terminal holds up neither a signal nor the process's exit.

    The thread reads the file descriptor with `os.read`: a daemon thread blocked inside a
    buffered reader would hold that reader's lock, and the interpreter aborts when it needs
    the lock at exit. It waits with `select.select` on the input and on a pipe of its own, so
    that `stop` ends it without another read: the lines it already took still come (the last
    one without its line break if only part of it had come), and the rest of the input stays
    unread, for whoever reads it next. A line longer than ``longest`` bytes is handed on cut at
    ``longest + 1`` bytes (whoever reads it refuses it as too large); the rest of it is skipped.
    """

    def __init__(self, stream: BinaryIO, longest: int) -> None:
        self._fd = stream.fileno()
        self._longest = longest
        self._portal = BlockingPortal()
        self._receive: ObjectReceiveStream[bytes] | None = None
        self._stopping = threading.Event()
        self._wake: tuple[int, int] | None = None

    async def __aenter__(self) -> ObjectReceiveStream[bytes]:
        await self._portal.__aenter__()
        send, receive = anyio.create_memory_object_stream[bytes](_LINES_AHEAD)
        self._receive = receive
        self._wake = os.pipe()
        threading.Thread(
            target=self._read, args=(send, self._wake[0]), name="organism-run-input", daemon=True
        ).start()
        return receive

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._receive is not None and self._wake is not None
        self.stop()
        await self._receive.aclose()  # a blocked send fails: the thread stops at its next line
        await self._portal.stop(cancel_remaining=True)  # later calls from the thread fail
        await self._portal.__aexit__(None, None, None)
        os.close(self._wake[1])  # the thread closes its end

    def stop(self) -> None:
        """Read no more from the input: the lines already read still come, then the end."""
        if self._stopping.is_set() or self._wake is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):  # the thread has ended, its end of the pipe closed
            os.write(self._wake[1], b"!")

    def _read(self, send: ObjectSendStream[bytes], wake: int) -> None:
        portal = self._portal
        try:
            try:
                for line in self._lines(wake):
                    portal.call(send.send, line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
                return  # the command stopped reading, or is gone
            except OSError as exc:
                log.error("reading the input failed: %s", exc)
            with contextlib.suppress(RuntimeError):  # the command is gone
                portal.call(send.aclose)
        finally:
            os.close(wake)

    def _readable(self, wake: int) -> bool:
        """Wait until the input can be read without blocking; ``False`` once stopped."""
        # select cannot wait on every input (a Windows pipe): then it is just read
        with contextlib.suppress(OSError, ValueError):
            select.select([self._fd, wake], [], [])  # the input, or a stop
        return not self._stopping.is_set()

    def _lines(self, wake: int) -> Iterator[bytes]:
        longest = self._longest
        pending = b""
        skipping = False  # the rest of a line that was too long
        while self._readable(wake) and (chunk := os.read(self._fd, _READ_SIZE)):
            log.debug("read %d bytes of input", len(chunk))
            pending += chunk
            start = 0
            while (end := pending.find(b"\n", start)) >= 0:
                if not skipping:
                    yield pending[start : end + 1]
                skipping = False
                start = end + 1
            pending = pending[start:]
            if len(pending) > longest:
                if not skipping:
                    yield pending[: longest + 1]
                skipping, pending = True, b""
        if pending and not skipping:
            yield pending
