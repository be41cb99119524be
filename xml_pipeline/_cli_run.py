"""``organism run``: answer envelopes from stdin or a file, each answer tagged with its line.

Part of the command line (`xml_pipeline.cli` parses the arguments and calls `run`); the library
never imports it. Envelopes are answered concurrently through `Organism.request_envelope`, no
more at once than the organism's ``ingress_limit`` (reading waits for room instead of failing):

- stdout: ``line N: <message ...>...</message>``, one line per answer as it comes (newlines
  inside it written ``&#10;``), N being the input line its envelope started on;
- stderr: ``line N: failed [reason] message`` for every envelope that got no answer, logs,
  the hop tree of each conversation with ``--trace``, and a summary at the end.

End of input waits for the answers still pending (each within ``--timeout``). A first Ctrl-C
stops reading and waits for them the same way; a second one gives up on them (``cancelled``).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.from_thread import BlockingPortal

from xml_pipeline._errors import DeliveryError, Reason, XmlInputError, XmlPipelineError
from xml_pipeline._organism import Organism
from xml_pipeline._runtime.tracing import HopTrace
from xml_pipeline._wire.envelope import envelope_bytes
from xml_pipeline._wire.framing import DocumentSplitter, Framed
from xml_pipeline._wire.payloads import from_xml, to_xml

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "RunOptions", "run"]

log = logging.getLogger("xml_pipeline.cli")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
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
    """

    timeout: float
    trace: bool = False
    to: str | None = None
    send: str | None = None
    source: BinaryIO | None = None
    multiline: bool = False


@dataclass
class _Tally:
    answered: int = 0
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    pending: int = 0
    interrupted: bool = False

    def summary(self) -> str:
        failed = sum(self.failed.values())
        text = f"{self.answered} answered, {failed} failed"
        if failed:
            reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.failed.items()))
            text += f" ({reasons})"
        return text


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
    tracer = HopTrace() if options.trace else None
    if tracer is not None:
        org.hooks.subscribe(tracer.record)
    async with org:
        log.info("organism %r running with %d listeners", org.name, len(org.listeners))
        if options.to is not None and options.send is not None:
            return await _send(org, options.to, options.send, options.timeout, tracer)
        assert options.source is not None
        tally = _Tally()
        await _answer_stream(org, options, options.source, tally, tracer)
    done = "interrupted" if tally.interrupted else "done"
    level = logging.WARNING if tally.failed or tally.interrupted else logging.INFO
    log.log(level, "%s: %s", done, tally.summary())
    for line in recovery_summary(org):
        log.log(level, "%s", line)
    if tally.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if tally.failed else EXIT_OK


async def _answer_stream(
    org: Organism, options: RunOptions, source: BinaryIO, tally: _Tally, tracer: HopTrace | None
) -> None:
    limiter = anyio.Semaphore(org.ingress_limit)
    splitter = DocumentSplitter(org.limits) if options.multiline else None

    async def submit(item: Framed) -> None:
        if item.error is not None:  # the input could not be cut into an envelope here
            _failed(item.line, item.error, tally)
            return
        await limiter.acquire()  # no more in flight than the organism admits
        tally.pending += 1
        work.start_soon(_answer, org, item, options, tally, tracer, limiter)

    reader = _LineReader(source, longest=org.limits.max_bytes)
    async with reader as lines, anyio.create_task_group() as watchers:
        async with anyio.create_task_group() as work:
            reading = anyio.CancelScope()
            watchers.start_soon(_interrupts, reading, work.cancel_scope, tally)
            watchers.start_soon(_progress, tally)
            with reading:
                lineno = 0
                async for line in lines:
                    lineno += 1
                    if splitter is not None:
                        for item in splitter.feed(line):
                            await submit(item)
                    elif text := line.strip():
                        await submit(Framed(lineno, text))
                if splitter is not None:
                    for item in splitter.close():
                        await submit(item)
                if tally.pending:
                    log.info("end of input; answers still pending: %d", tally.pending)
        watchers.cancel_scope.cancel()


async def _answer(
    org: Organism,
    item: Framed,
    options: RunOptions,
    tally: _Tally,
    tracer: HopTrace | None,
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
            _failed(item.line, _cancelled(), tally)
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


def _cancelled() -> DeliveryError:
    return DeliveryError(
        "interrupted (Ctrl-C twice) before its answer came", reason=Reason.CANCELLED
    )


async def _trace(tracer: HopTrace, line: int, conversation: str | None) -> None:
    """Print a conversation's hop tree on stderr, then forget it."""
    if conversation is None:
        return
    await tracer.settled(conversation, _SETTLE)
    lines = tracer.lines(conversation)
    tracer.forget(conversation)
    body = "".join(f"{text}\n" for text in lines[1:])
    sys.stderr.write(f"trace of line {line}: {lines[0]}\n{body}")
    sys.stderr.flush()


async def _send(org: Organism, to: str, send: str, timeout: float, tracer: HopTrace | None) -> int:
    """``--to``/``--send``: one payload; its answer's payload XML on stdout."""
    status = EXIT_OK
    try:
        payload: object = from_xml(_listener_class(org, to), send, limits=org.limits)
        answer = await org.request(to, payload, timeout=timeout)
        print(to_xml(answer).decode(), flush=True)
    except XmlPipelineError as exc:
        print(f"error (--send): {exc}", file=sys.stderr, flush=True)
        status = EXIT_FAILED
    if tracer is not None:
        for conversation in tracer.conversations():
            await tracer.settled(conversation, _SETTLE)
            lines = tracer.lines(conversation)
            sys.stderr.write(f"trace of --send: {lines[0]}\n")
            sys.stderr.write("".join(f"{text}\n" for text in lines[1:]))
    return status


def _listener_class(org: Organism, name: str) -> type:
    for listener in org.listeners:
        if listener.name == name:
            return listener.payload_class
    names = ", ".join(sorted(listener.name for listener in org.listeners))
    raise DeliveryError(f"no listener named {name!r}; listeners: {names}", reason="no_route")


async def _interrupts(reading: anyio.CancelScope, work: anyio.CancelScope, tally: _Tally) -> None:
    """First Ctrl-C: stop reading, let pending answers come. Second: give up on them."""
    try:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            await _on_interrupts(signals, reading, work, tally)
    except NotImplementedError:  # no signal handlers on this platform: Ctrl-C stops at once
        return


async def _on_interrupts(
    signals: AsyncIterator[object],
    reading: anyio.CancelScope,
    work: anyio.CancelScope,
    tally: _Tally,
) -> None:
    async for _ in signals:
        if not tally.interrupted:
            tally.interrupted = True
            reading.cancel()
            log.warning(
                "interrupted: no more input is read; waiting for %d pending answers "
                "(each within --timeout); press Ctrl-C again to give up on them",
                tally.pending,
            )
        else:
            log.warning("interrupted again: giving up on %d pending answers", tally.pending)
            work.cancel()


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
    a read blocked on a terminal holds up neither Ctrl-C nor the process's exit.

    The thread reads the file descriptor with `os.read`: a daemon thread blocked inside a
    buffered reader would hold that reader's lock, and the interpreter aborts when it needs
    the lock at exit. A line longer than ``longest`` bytes is handed on cut at ``longest + 1``
    bytes (whoever reads it refuses it as too large); the rest of it is skipped.
    """

    def __init__(self, stream: BinaryIO, longest: int) -> None:
        self._fd = stream.fileno()
        self._longest = longest
        self._portal = BlockingPortal()
        self._receive: ObjectReceiveStream[bytes] | None = None

    async def __aenter__(self) -> ObjectReceiveStream[bytes]:
        await self._portal.__aenter__()
        send, receive = anyio.create_memory_object_stream[bytes](_LINES_AHEAD)
        self._receive = receive
        threading.Thread(
            target=self._read, args=(send,), name="organism-run-input", daemon=True
        ).start()
        return receive

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._receive is not None
        await self._receive.aclose()  # a blocked send fails: the thread stops at its next line
        await self._portal.stop(cancel_remaining=True)  # later calls from the thread fail
        await self._portal.__aexit__(None, None, None)

    def _read(self, send: ObjectSendStream[bytes]) -> None:
        portal = self._portal
        try:
            for line in self._lines():
                portal.call(send.send, line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, RuntimeError):
            return  # the command stopped reading, or is gone
        except OSError as exc:
            log.error("reading the input failed: %s", exc)
        with contextlib.suppress(RuntimeError):  # the command is gone
            portal.call(send.aclose)

    def _lines(self) -> Iterator[bytes]:
        longest = self._longest
        pending = b""
        skipping = False  # the rest of a line that was too long
        while chunk := os.read(self._fd, _READ_SIZE):
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
