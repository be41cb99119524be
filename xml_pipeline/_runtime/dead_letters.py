"""The dead letters a pump records: built on the failure path, kept in the backend behind it.

What is dead-lettered (the rule, written once here and in the README):

- a conversation that fails with nobody awaiting its outcome: ``send``, ``inject`` and replays
  (their outcome also goes to the outbox);
- every conversation still open when the organism stops and its drain timeout has passed,
  ``request`` ones included, with reason ``shutdown`` (their requester also gets the error): the
  organism that would have answered is going away, so the queue is where they can be replayed
  from;
- a compensation that failed (``compensation_failed``, `DeadLetterRecorder.record_compensation`):
  its envelope holds the answer that was not undone, for a person to act on; it is not replayed.
  Whatever else could not be delivered goes through `DeadLetterRecorder.record`.

A ``request`` that fails while the organism runs is not: its caller got the error, so it was
delivered. Nor is a call refused at the door (``overloaded``, ``no_route``, ``shutdown`` while
stopping): the caller still holds what it sent.

Nothing is paid per hop: a conversation keeps a reference to its opening payload and sender,
and the envelope is written (``to_xml``) only when it is dead-lettered. Appends go to the
backend from a writer task, in the order recorded and in batches, so ending a conversation
never waits for I/O; `flush` waits for them (readers call it first, so a process reads its own
dead letters).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from xml_pipeline._errors import DeliveryError, Reason, XmlPipelineError
from xml_pipeline._runtime.hops import Conversation, Frame
from xml_pipeline._runtime.outcomes import Counters
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._wire.envelope import envelope_bytes
from xml_pipeline._wire.payloads import to_xml
from xml_pipeline.backends.base import DeadLetter

__all__ = ["DeadLetterRecorder"]

log = logging.getLogger("xml_pipeline.dead_letters")

# An append that fails is tried again after each of these pauses (seconds), then given up:
# logged at ERROR with its envelope, and counted in stats.dead_letters_lost.
_RETRY_PAUSES = (0.1, 0.5, 2.0)
_BATCH = 100  # dead letters appended in one backend step


class DeadLetterRecorder:
    """Keeps the dead letters of one pump in its backend, at most ``max_entries`` of them.

    `record` is the one way in: the pump calls it (through `record_failure`) for conversations
    that end undelivered, and recovery code may call it for what it could not do. One writer
    task appends what was recorded, in order, a batch per backend step, and ends when nothing
    is left to write.
    """

    def __init__(self, registry: ThreadRegistry, counters: Counters, max_entries: int) -> None:
        self._registry = registry
        self._counters = counters
        self.max_entries = max_entries
        self._pending: deque[DeadLetter] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the running loop."""
        self._loop = loop

    def record(
        self,
        *,
        conversation: str,
        reason: str,
        message: str,
        listener: str,
        envelope: bytes,
        chain: tuple[str, ...] = (),
        attempts: int = 1,
    ) -> None:
        """Keep a dead letter: appended to the backend in the background (never blocks).

        ``envelope`` is what a replay injects as a new conversation (a v1 envelope, as
        `Organism.inject` takes it); ``chain`` the listener names from the first one down to
        the one that failed; ``attempts`` how often the failing hop was run.
        """
        letter = DeadLetter(
            conversation, reason, message, listener,
            envelope=envelope, chain=chain, attempts=attempts,
        )  # fmt: skip
        self._pending.append(letter)
        self._counters.dead_lettered += 1
        if self._writer is None:
            loop = self._loop or asyncio.get_running_loop()
            self._writer = loop.create_task(self._write())

    def record_failure(self, conv: Conversation, error: DeliveryError) -> None:
        """Keep the conversation ``conv``, which ended with ``error``, with the envelope that
        started it (see the module docstring for which conversations come here)."""
        if error.reason == Reason.SHUTDOWN or conv.failed is None:
            frame, attempts = _running_frame(conv), 1  # what it was doing when it was stopped
        else:
            frame, attempts = conv.failed
        self.record(
            conversation=conv.id,
            reason=str(error.reason),
            message=error.message,
            listener=error.listener or "",
            envelope=_opening_envelope(conv),
            chain=_chain(frame) if frame is not None else (conv.started_by,),
            attempts=attempts,
        )

    def record_compensation(
        self, conversation: str, listener: str, answer: object, message: str
    ) -> None:
        """Keep a compensation that failed (reason ``compensation_failed``): its envelope holds
        the answer of ``listener`` that was not undone. It is for a person to act on (undo it
        by hand, then purge it): `DeadLetters.replay` refuses it and keeps it."""
        log.warning("conversation %s: %s", conversation, message)
        self.record(
            conversation=conversation,
            reason=Reason.COMPENSATION_FAILED,
            message=message,
            listener=listener,
            envelope=_envelope("", listener, answer, conversation),
            chain=(listener,),
        )

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every dead letter recorded so far is in the backend (or given up).

        After ``timeout`` seconds the rest are given up: each logged at ERROR with its
        envelope and counted in ``stats.dead_letters_lost``.
        """
        writer = self._writer
        if writer is None:
            return
        _, late = await asyncio.wait([writer], timeout=timeout)
        if late:
            writer.cancel()
            await asyncio.wait([writer])

    async def _write(self) -> None:
        pending = self._pending
        batch: list[DeadLetter] = []
        try:
            while pending:
                batch = [pending.popleft() for _ in range(min(len(pending), _BATCH))]
                await self._append(batch)
                batch = []
        except asyncio.CancelledError:
            for letter in (*batch, *pending):
                self._lost(letter, "it was still being written when the organism stopped")
            pending.clear()
            raise
        finally:
            self._writer = None

    async def _append(self, batch: list[DeadLetter]) -> None:
        for pause in (*_RETRY_PAUSES, None):
            try:
                await self._registry.keep_dead_letters(batch, self.max_entries)
                return
            except XmlPipelineError as exc:
                if pause is None:
                    for letter in batch:
                        self._lost(letter, f"the backend failed: {exc}")
                    return
            await asyncio.sleep(pause)

    def _lost(self, letter: DeadLetter, why: str) -> None:
        self._counters.dead_letters_lost += 1
        log.error(
            "dead letter of conversation %s (%s from %r) could not be kept: %s; its envelope, "
            "to inject again by hand: %s",
            letter.conversation, letter.reason, letter.listener, why,
            letter.envelope.decode("utf-8", "replace"),
        )  # fmt: skip


def _opening_envelope(conv: Conversation) -> bytes:
    """The envelope that started ``conv``, with an empty thread (a replay starts anew) and
    its trace context (a replay joins the trace it came from)."""
    # names starting with '_' are the organism's own (the outside: `_external`); an envelope
    # from outside may not claim them, so the envelope leaves <from> empty instead
    sender = "" if conv.sender.startswith("_") else conv.sender
    return _envelope(sender, conv.started_by, conv.payload, conv.id, conv.traceparent)


def _envelope(
    sender: str, to: str, payload: object, conversation: str, traceparent: str = ""
) -> bytes:
    try:
        return envelope_bytes(sender, to, "", to_xml(payload), traceparent)
    except (XmlPipelineError, ValueError) as exc:  # changed after it was sent, say
        log.error(
            "the payload of conversation %s for %r cannot be written as XML any more (%s); "
            "its dead letter has no envelope",
            conversation, to, exc,
        )  # fmt: skip
        return b""


def _chain(frame: Frame) -> tuple[str, ...]:
    """The listener names from the conversation's first call down to ``frame``'s."""
    names: list[str] = []
    at: Frame | None = frame
    while at is not None and at.parent is not None:  # the root frame is the sender outside
        names.append(at.listener)
        at = at.parent
    names.reverse()
    return tuple(names)


def _running_frame(conv: Conversation) -> Frame | None:
    """The deepest call whose handler runs now for ``conv`` (stopped by shutdown, say)."""
    deepest: Frame | None = None
    depth = -1
    for hop in conv.running:
        n, at = 0, hop.frame
        while at.parent is not None:
            n, at = n + 1, at.parent
        if n > depth:
            deepest, depth = hop.frame, n
    return deepest
