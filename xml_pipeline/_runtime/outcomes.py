"""How conversations end: their outcome delivered once, dead letters, and the counters.

A conversation ends once, for one of many reasons (answer, failure, request timeout, requester
cancelled, ``hop_limit``, lost, shutdown). `Conversations.finish` is that one place: it marks the
conversation done, frees its ingress slot, stops its running hops (through ``stop``), delivers
the outcome to whoever waits for it, hands it to ``dead_letter`` when it was not delivered (the
rule: `xml_pipeline._runtime.dead_letters`), and counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from xml_pipeline._errors import DeliveryError, Reason
from xml_pipeline._handlers import ErrorReport
from xml_pipeline._runtime.hops import Conversation, Hop
from xml_pipeline._runtime.ingress import IngressGate
from xml_pipeline._runtime.outbox import Outbox, Outcome

__all__ = ["Conversations", "Counters", "PumpStats"]

log = logging.getLogger("xml_pipeline.pump")

# Conversations ending with these reasons were lost to the backend or to the pump itself.
_LOST = frozenset({Reason.BACKEND_ERROR, Reason.BACKEND_UNREACHABLE, Reason.INTERNAL_ERROR})


@dataclass(frozen=True, slots=True)
class PumpStats:
    """A snapshot of an organism's counters since it started (`Organism.stats`).

    Attributes:
        conversations: conversations started (requests, sends and injects that got in).
        answered: conversations that ended with an answer.
        failed: conversations that ended with a failure (every reason, ``no_answer`` included).
        no_answer: of those, the ones that ended because nothing could answer any more.
        hops: handler runs started.
        handler_errors: handler runs that raised (in process or in a worker).
        timeouts: handler runs over their ``timeout_seconds``, and requests over their
            ``timeout``.
        late_replies: answers and calls on a thread that was already retired, dropped.
        overloaded: ingress calls refused because the organism stayed full.
        lost: conversations ended by a backend or internal failure (each one logged).
        cancelled: requests whose requester stopped waiting (cancelled), before or after the
            conversation started.
        rejected: ingress calls refused for their input before a conversation started (no
            route, forged sender, not a payload, schema violation, bad XML); each logged.
        abandoned: handlers that went on running after the pump cancelled them; each logged,
            its concurrency slot given back.
        retries: hops run again by a listener's retry policy.
        outcomes_dropped: outcomes of ``send``/``inject`` conversations dropped from a full
            outbox because nobody read `Organism.outcomes` (the oldest go first).
        dead_lettered: dead letters recorded (see `Organism.dead_letters`).
        dead_letters_lost: of those, the ones the backend could not keep (each logged at
            ERROR with its envelope).
        traceparents_ignored: envelopes from outside whose ``<traceparent>`` was malformed:
            the envelope was taken, the trace context ignored (each logged with the reason).
    """

    conversations: int = 0
    answered: int = 0
    failed: int = 0
    no_answer: int = 0
    hops: int = 0
    handler_errors: int = 0
    timeouts: int = 0
    late_replies: int = 0
    overloaded: int = 0
    lost: int = 0
    cancelled: int = 0
    rejected: int = 0
    abandoned: int = 0
    retries: int = 0
    outcomes_dropped: int = 0
    dead_lettered: int = 0
    dead_letters_lost: int = 0
    traceparents_ignored: int = 0


class Counters:
    """The live, mutable counters behind `PumpStats` (a slots class: they change every hop)."""

    __slots__ = (
        "abandoned", "answered", "cancelled", "conversations", "dead_lettered",
        "dead_letters_lost", "failed", "handler_errors", "hops", "late_replies", "lost",
        "no_answer", "overloaded", "rejected", "retries", "timeouts", "traceparents_ignored",
    )  # fmt: skip

    def __init__(self) -> None:
        self.conversations = self.answered = self.failed = self.no_answer = 0
        self.hops = self.handler_errors = self.timeouts = self.late_replies = 0
        self.overloaded = self.lost = self.cancelled = self.rejected = 0
        self.abandoned = self.retries = 0
        self.dead_lettered = self.dead_letters_lost = self.traceparents_ignored = 0

    def snapshot(self, overloaded: int, outcomes_dropped: int) -> PumpStats:
        """The counters now, frozen (``overloaded`` is counted by the ingress gate,
        ``outcomes_dropped`` by the outbox)."""
        values = {name: getattr(self, name) for name in self.__slots__}
        values["overloaded"] = overloaded
        return PumpStats(**values, outcomes_dropped=outcomes_dropped)


class Conversations:
    """The open conversations of one pump, and the one way each of them ends.

    ``stop(hop)`` is called for every hop still running in a conversation that ends (the
    invocation cancels its handler). The outcomes of conversations nobody awaits go to
    ``outbox``; those that were not delivered go to ``dead_letter(conv, error)`` too.
    """

    def __init__(
        self,
        ingress: IngressGate,
        counters: Counters,
        stop: Callable[[Hop, str], None],
        outbox: Outbox,
        dead_letter: Callable[[Conversation, DeliveryError], None],
    ) -> None:
        self._open: dict[str, Conversation] = {}
        self._ingress = ingress
        self._counters = counters
        self._stop = stop
        self.outbox = outbox
        self.idle = asyncio.Event()
        self.idle.set()
        self._dead_letter = dead_letter
        self.ended: Callable[[Conversation, DeliveryError | None], None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, conv: Conversation) -> None:
        """``conv`` made its opening call: it is open until `finish`."""
        self._open[conv.id] = conv
        self.idle.clear()
        self._counters.conversations += 1

    def all(self) -> list[Conversation]:
        """The conversations open now."""
        return list(self._open.values())

    def finish(self, conv: Conversation, outcome: object) -> bool:
        """End ``conv`` with ``outcome`` (an answer payload, an `ErrorReport` or a
        `DeliveryError`): deliver it, stop its running hops, free its ingress slot.

        Returns:
            False when it had ended already (nothing is done twice).
        """
        if conv.done:
            return False
        conv.done = True
        if conv.due is not None:
            conv.due.discard(conv)  # its deadline (see deadlines.py)
        conv.requester = None  # kept runs and dead letters hold conv: not the caller's task
        del self._open[conv.id]
        self._ingress.release()
        if not self._open:
            self.idle.set()
        if conv.running:
            for hop in list(conv.running):
                self._stop(hop, "ended")
        error = as_error(outcome, conv.id)
        counters = self._counters
        if error is None:
            counters.answered += 1
        else:
            counters.no_answer += error.reason == Reason.NO_ANSWER
            counters.lost += error.reason in _LOST
            counters.failed += 1
        future = conv.future
        if future is not None and not future.done():
            if error is None:
                future.set_result(outcome)
            else:
                future.set_exception(error)
        elif future is None:
            if error is None:
                self.outbox.put(Outcome(conv.id, conv.started_by, outcome, None, conv.answered_by))
            else:
                self.outbox.put(Outcome(conv.id, conv.started_by, None, error))
        # not delivered: nobody awaits it, or the organism stops (see _runtime.dead_letters)
        if error is not None and (future is None or error.reason == Reason.SHUTDOWN):
            self._dead_letter(conv, error)
            if future is None:
                log.warning("conversation %s failed: %s", conv.id, error)
        if self.ended is not None:
            self.ended(conv, error)
        return True


def as_error(outcome: object, conversation: str) -> DeliveryError | None:
    """The `DeliveryError` an outcome stands for, or ``None`` for an answer."""
    if isinstance(outcome, DeliveryError):
        return outcome
    if isinstance(outcome, ErrorReport):
        return DeliveryError(
            outcome.message, reason=outcome.reason, listener=outcome.listener, thread=conversation
        )
    return None
