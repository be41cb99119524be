"""Hops made visible to people: one log line per hop at DEBUG, and a conversation's hop tree.

Both are `Hooks` subscribers, so they cost nothing unless installed:

- `HopLog` logs each finished hop on the ``xml_pipeline.hops`` logger, as
  ``hop _external -> greeter <Greeting> conv 5b1c0e7a 0.081 ms ok``. An `Organism` subscribes
  one when it starts if that logger is enabled for DEBUG then (`hop_log_enabled`); otherwise
  the hot path builds no event at all.
- `HopTrace` records the hops of conversations and draws each one as a tree (``organism run
  --trace``): calls nested under the hop that made them, with listeners, payload tags,
  durations and outcomes.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict

import anyio

from xml_pipeline._handlers import ErrorReport
from xml_pipeline._runtime.hooks import ConversationEvent, Event, HopEvent
from xml_pipeline._wire.payloads import payload_spec

__all__ = ["HOP_LOG", "HopLog", "HopTrace", "hop_log_enabled"]

HOP_LOG = logging.getLogger("xml_pipeline.hops")


def hop_log_enabled() -> bool:
    """Whether hops should be logged: ``xml_pipeline.hops`` is enabled for DEBUG."""
    return HOP_LOG.isEnabledFor(logging.DEBUG)


class HopLog:
    """A `Hooks` subscriber: one DEBUG line per finished hop on ``xml_pipeline.hops``.

    The line reads ``hop SENDER -> LISTENER <Tag> conv SHORT_ID DURATION OUTCOME`` (outcome
    ``ok``, or the failure's reason code, or ``ended`` when the conversation ended while the
    handler ran), with ``attempt N`` appended when a retry policy ran the hop again. An answer
    handed to a handler awaiting it in ``meta.call`` runs no handler: its line reads ``- answered``
    (``- answered (reason)`` for a failure). Durations are timed here with `time.perf_counter`
    (the event loop's clock may tick in milliseconds).

    ``org.hooks.subscribe(HopLog())``
    """

    def __init__(self) -> None:
        self._started: dict[tuple[str, int, int], float] = {}

    def __call__(self, event: Event) -> None:
        if type(event) is not HopEvent:
            return
        # the hop holds its payload until it finishes: the object's id cannot be reused before
        key = (event.thread, id(event.payload), event.attempt)
        kind = event.kind
        if kind == "started":
            self._started[key] = time.perf_counter()
            return
        if kind == "finished":
            began = self._started.pop(key, None)
            took = seconds(event.duration if began is None else time.perf_counter() - began)
            outcome = event.outcome or "ok"
        else:  # an answer handed to a handler awaiting it in meta.call: no handler ran
            took, outcome = "-", f"answered{_failure(event.payload)}"
        attempt = f" attempt {event.attempt}" if event.attempt > 1 else ""
        HOP_LOG.debug(
            "hop %s -> %s <%s> conv %s %s %s%s",
            event.sender,
            event.listener,
            payload_tag(event.payload),
            short_id(event.conversation),
            took,
            outcome,
            attempt,
        )


def _failure(payload: object) -> str:
    """`` (reason)`` when an awaited answer is an `ErrorReport`, else nothing."""
    return f" ({payload.reason})" if isinstance(payload, ErrorReport) else ""


def short_id(conversation: str) -> str:
    """The first 8 characters of a conversation id: enough to tell conversations apart."""
    return conversation[:8]


def seconds(duration: float | None) -> str:
    """A duration for people: ``0.081 ms``, ``12.5 ms``, ``2.41 s`` (``?`` when unknown)."""
    if duration is None or not math.isfinite(duration):
        return "?"
    if duration < 0.001:
        return f"{duration * 1000:.3f} ms"
    if duration < 1:
        return f"{duration * 1000:.1f} ms"
    return f"{duration:.2f} s"


def payload_tag(payload: object) -> str:
    """The XML tag of a payload object (its class name when it is not a ``@payload``)."""
    try:
        return payload_spec(payload).tag
    except Exception:
        return type(payload).__name__


class _Hop:
    """A handler run, or an answer handed to a handler awaiting it (``awaited``)."""

    __slots__ = (
        "attempt", "awaited", "caller", "duration", "listener", "outcome", "payload", "sender",
        "seq", "started", "tag", "thread",
    )  # fmt: skip

    def __init__(self, event: HopEvent, seq: int) -> None:
        self.awaited = event.kind == "answered"
        self.seq = seq  # the order hops started in (clocks may tick too coarsely to tell)
        self.thread = event.thread
        self.caller = event.caller_thread
        self.sender = event.sender
        self.listener = event.listener
        self.payload = event.payload  # to match its `finished` event, then dropped
        self.tag = payload_tag(event.payload)
        self.attempt = event.attempt
        self.started = time.perf_counter()
        self.duration: float | None = None
        self.outcome = "running"  # until its `finished` event


class _Conversation:
    __slots__ = ("ended", "hops", "listener", "opened", "outcome", "running", "settled")

    def __init__(self) -> None:
        self.hops: list[_Hop] = []
        self.running = 0
        self.opened: float | None = None
        self.ended: float | None = None
        self.listener = ""
        self.outcome: str | None = None
        self.settled: anyio.Event | None = None  # made when somebody waits


class HopTrace:
    """The hop events of conversations, kept to draw each conversation as a tree.

    Subscribe `record` to an organism's hooks; after a conversation's answer, `await
    settled(id)` and print `lines(id)`, then `forget(id)`. At most ``keep`` conversations are
    kept: the oldest go first.

    ``trace = HopTrace(); unsubscribe = org.hooks.subscribe(trace.record)``
    """

    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        self._threads: dict[str, str] = {}  # thread id -> conversation id
        self._seq = 0

    def record(self, event: Event) -> None:
        """The `Hooks` subscriber: take one event."""
        conv = self._conversations.get(event.conversation)
        if conv is None:
            conv = self._conversations[event.conversation] = _Conversation()
            if len(self._conversations) > self._keep:
                self.forget(next(iter(self._conversations)))
        if type(event) is ConversationEvent:
            if event.kind == "opened":
                conv.opened, conv.listener = time.perf_counter(), event.listener
            else:
                conv.ended, conv.outcome = time.perf_counter(), event.outcome or "answered"
        elif type(event) is HopEvent:
            if event.kind == "started":
                self._seq += 1
                conv.hops.append(_Hop(event, self._seq))
                conv.running += 1
                self._threads[event.thread] = event.conversation
            elif event.kind == "answered":
                self._seq += 1
                hop = _Hop(event, self._seq)
                answer = event.payload
                hop.outcome = answer.reason if isinstance(answer, ErrorReport) else "ok"
                hop.payload = None
                conv.hops.append(hop)
            else:
                self._finish(conv, event)
        if conv.settled is not None and conv.ended is not None and not conv.running:
            conv.settled.set()

    def _finish(self, conv: _Conversation, event: HopEvent) -> None:
        for hop in conv.hops:  # the oldest running hop with this thread, payload and attempt
            if (
                hop.outcome == "running"
                and not hop.awaited
                and hop.thread == event.thread
                and hop.payload is event.payload
                and hop.attempt == event.attempt
            ):
                hop.duration = time.perf_counter() - hop.started
                hop.outcome = event.outcome or "ok"
                hop.payload = None
                conv.running -= 1
                return

    def conversation_of(self, thread: str | None) -> str | None:
        """The conversation a thread id (of any of its calls) belongs to, if it was seen."""
        if thread is None:
            return None
        if thread in self._conversations:
            return thread
        return self._threads.get(thread)

    def conversations(self) -> list[str]:
        """The ids of the conversations kept, oldest first."""
        return list(self._conversations)

    async def settled(self, conversation: str, timeout: float = 1.0) -> bool:
        """Wait until ``conversation`` ended and each of its hops finished (a hop's last event
        may come just after the answer), ``timeout`` seconds at most.

        Returns:
            whether it settled; a tree drawn after ``False`` shows hops still ``running``.
        """
        conv = self._conversations.get(conversation)
        if conv is None:
            return False
        if conv.ended is not None and not conv.running:
            return True
        if conv.settled is None:
            conv.settled = anyio.Event()
        with anyio.move_on_after(timeout):
            await conv.settled.wait()
            return True
        return False

    def forget(self, conversation: str) -> None:
        """Drop what is kept of ``conversation``."""
        conv = self._conversations.pop(conversation, None)
        if conv is not None:
            for hop in conv.hops:
                self._threads.pop(hop.thread, None)

    def lines(self, conversation: str) -> list[str]:
        """The conversation as lines of text: a header, then one line per hop in call order.

        The header reads ``conversation ID answered in 0.41 ms, 2 hops`` (or ``failed
        (reason)``, or ``still open``; hops are handler runs). Each hop is ``call`` (the first
        delivery on its thread), ``answer`` (an answer delivered back to it) or ``retry``,
        then ``listener <- sender <Tag> duration outcome``; a call is indented under the hop
        that made it, and so is an answer handed to a handler awaiting it in ``meta.call``
        (``(awaited)`` in place of a duration).
        """
        conv = self._conversations.get(conversation)
        if conv is None:
            return [f"conversation {conversation}: no hops seen"]
        if conv.ended is None:
            state = "still open"
        elif conv.outcome == "answered":
            state = "answered"
        else:
            state = f"failed ({conv.outcome})"
        took = ""
        if conv.opened is not None and conv.ended is not None:
            took = f" in {seconds(conv.ended - conv.opened)}"
        runs = [hop for hop in conv.hops if not hop.awaited]
        count = len(runs)
        lines = [f"conversation {conversation} {state}{took}, {count} hop{'s' * (count != 1)}"]
        by_thread: dict[str, list[_Hop]] = {}
        calls: dict[str | None, list[str]] = {}  # caller thread -> the threads it called
        awaited: dict[str, list[_Hop]] = {}  # thread -> answers its handlers awaited
        for hop in conv.hops:
            if hop.awaited:
                awaited.setdefault(hop.thread, []).append(hop)
                continue
            if hop.thread not in by_thread:
                by_thread[hop.thread] = []
                calls.setdefault(hop.caller, []).append(hop.thread)
            by_thread[hop.thread].append(hop)

        def line(hop: _Hop, kind: str, depth: int) -> str:
            if hop.awaited:
                took = "(awaited)"
            else:
                took = "-" if hop.duration is None else seconds(hop.duration)
            head = f"{'  ' * depth}{kind:<6} {hop.listener} <- {hop.sender}"
            return f"{head} <{hop.tag}> {took} {hop.outcome}"

        def walk(thread: str, depth: int) -> None:
            hops = by_thread.get(thread, [])
            inside: list[tuple[int, str | _Hop]] = [
                (by_thread[callee][0].seq, callee) for callee in calls.get(thread, [])
            ]
            inside += [(answer.seq, answer) for answer in awaited.get(thread, [])]
            inside.sort(key=lambda item: item[0])
            for i, hop in enumerate(hops):
                kind = "call" if i == 0 else "retry" if hop.attempt > 1 else "answer"
                lines.append(line(hop, kind, depth))
                # what happened in this hop: the calls it made and the answers it awaited,
                # after it started and before the thread's next hop
                until = hops[i + 1].seq if i + 1 < len(hops) else math.inf
                for seq, item in inside:
                    if hop.seq < seq < until:
                        if isinstance(item, str):
                            walk(item, depth + 1)
                        else:
                            lines.append(line(item, "answer", depth + 1))

        for thread in calls.get(None, []):
            walk(thread, 1)
        # threads whose caller's hops were not seen (recorded from mid-conversation): on top
        for caller, threads in calls.items():
            if caller is not None and caller not in by_thread:
                for thread in threads:
                    walk(thread, 1)
        return lines
