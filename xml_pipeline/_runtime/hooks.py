"""Seeing every hop: a small subscription API with typed events, free when nobody listens.

`Hooks` is the one way to observe a running organism from inside the process: the testing
helpers (`xml_pipeline.testing.capture`), and later the run registry, metrics and traces,
subscribe to it. The pump builds an event only when somebody subscribed (one truth test per hop
otherwise), and calls subscribers synchronously on the event loop, in subscription order: a
subscriber must be quick and must not block (hand the event to a queue of your own for slow
work). A subscriber that raises is logged and unsubscribed; the hop goes on.

Events are named tuples: immutable, and about a quarter of a frozen dataclass to build (0.25 us
against 1.1 us; a hop makes two), which is most of what observing a hop costs.

An observer that only counts (metrics with aggregating sinks alone, the control plane's
per-listener and per-edge counters) need not have an event built per hop: it registers a
`HopTally` with `Hooks.count_hops`, which the pump calls with the finished hop's fields as
plain arguments (and subscribes with ``hops=False`` if it wants conversation and ``answered``
events too). A finished hop then costs a call, not a tuple that lives in a buffer until the
next flush. Several tallies may count at once (each is called, in registration order); with
tallies alone and no subscriber, the pump builds no event at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol, runtime_checkable

__all__ = ["ConversationEvent", "Event", "HookSubscriber", "Hooks", "HopEvent", "HopTally"]

log = logging.getLogger("xml_pipeline.hooks")


class HopEvent(NamedTuple):
    """A hop delivered to a handler (``started``) or done with (``finished``), or an answer
    delivered to a handler awaiting it in ``meta.call`` (``answered``).

    Attributes:
        kind: ``"started"`` when the handler is about to run; ``"finished"`` when the hop's
            outcome is known; ``"answered"`` when the answer (or `ErrorReport`) of a
            ``meta.call`` reaches the handler awaiting it (no handler starts: the awaiting one
            goes on; ``thread`` is the awaiting handler's, ``sender`` the callee).
        conversation: the conversation's id (the thread id of its first call).
        thread: the opaque thread id the handler runs on.
        sender: who sent the payload (a listener, or the outside sender).
        listener: the listener whose handler runs.
        payload: the payload object (do not change it).
        attempt: 1, or more when a retry policy ran the hop again.
        at: ``time.perf_counter()`` (seconds) when the event happened (finer than the event
            loop's clock, which uvloop keeps in milliseconds, once per loop iteration).
        duration: seconds from ``started`` to ``finished`` (``None`` on ``started``).
        outcome: on ``finished``: ``None`` when the handler returned and its outputs were
            accepted, else the failure's reason code (``handler_error``, ``timeout``...);
            ``"ended"`` when the conversation ended while the handler ran.
        caller_thread: the thread of the call that made ``thread``'s call (the caller's
            thread), or ``None`` when ``thread`` is the conversation's first call, made from
            outside. The hops of one conversation form a tree through it.
        maker: on ``started``/``finished``: the ``at`` of the ``started`` event of the hop
            that made the call ``thread`` answers (which of the caller's hops made it), when
            it was observed; ``None`` otherwise.
    """

    kind: Literal["started", "finished", "answered"]
    conversation: str
    thread: str
    sender: str
    listener: str
    payload: object
    attempt: int
    at: float
    duration: float | None = None
    outcome: str | None = None
    caller_thread: str | None = None
    maker: float | None = None


class ConversationEvent(NamedTuple):
    """A conversation opened, or ended with its outcome.

    Attributes:
        kind: ``"opened"`` or ``"ended"``.
        conversation: its id.
        listener: the listener it was started at.
        at: ``time.perf_counter()`` (seconds) when it happened.
        outcome: on ``ended``: ``None`` when it was answered, else the reason code.
        traceparent: on ``opened``: the W3C ``traceparent`` its envelope carried (well formed;
            a malformed one is ignored before), else ``None``. ``opened`` is emitted in the
            task that opened the conversation, so a subscriber may read that task's context
            (the caller's active OpenTelemetry span) too.
    """

    kind: Literal["opened", "ended"]
    conversation: str
    listener: str
    at: float
    outcome: str | None = None
    traceparent: str | None = None


Event = HopEvent | ConversationEvent


@runtime_checkable
class HookSubscriber(Protocol):
    """What `Hooks.subscribe` takes: called with each event, on the event loop's thread.

    The contract, run against every subscriber of the library by
    ``tests/runtime/test_hook_subscriber_contract.py``: it takes every kind of event (hop
    ``started``/``finished``/``answered``, conversation ``opened``/``ended``, failures
    included) without raising (one that raises is logged and unsubscribed); it returns at once,
    never blocking or awaiting (hand slow work to a queue of its own); it does not change the
    event's payload; once unsubscribed it is called no more.
    """

    def __call__(self, event: Event, /) -> None: ...


# tally(listener, sender, attempt, duration, outcome): a finished hop, as `HopEvent` has them
HopTally = Callable[[str, str, int, float, "str | None"], None]


class Hooks:
    """The subscribers of one organism's events, and the tallies of its finished hops.

    ``started`` events go only to subscribers that asked for them (the default); when none
    did (``subscribe(fn, started=False)``, as the metrics collector does without tracing), the
    pump does not build them. With tallies alone (`count_hops`) it builds no event at all.
    """

    __slots__ = (
        "_conversation_subscribers", "_hop_subscribers", "_starters", "_subscribers", "_tallies",
        "active", "events", "hop_events", "starters", "tally",
    )  # fmt: skip

    def __init__(self) -> None:
        self._subscribers: tuple[HookSubscriber, ...] = ()  # replaced, never changed: emit reads it
        self._starters: tuple[HookSubscriber, ...] = ()  # those that want started events
        self._hop_subscribers: tuple[HookSubscriber, ...] = ()  # those that want finished events
        # those that want conversation and answered events
        self._conversation_subscribers: tuple[HookSubscriber, ...] = ()
        self._tallies: tuple[HopTally, ...] = ()
        self.active = False  # whether anybody observes (subscribers or tallies): hops timed
        self.events = False  # whether anybody wants conversation and answered events
        self.starters = False  # whether anybody wants started events
        self.hop_events = False  # whether anybody wants finished events
        self.tally: HopTally | None = None  # calls every tally (the one itself when alone)

    def __bool__(self) -> bool:
        """Whether anybody listens (as `active`)."""
        return self.active

    def subscribe(
        self,
        subscriber: HookSubscriber,
        *,
        started: bool = True,
        hops: bool = True,
        conversations: bool = True,
    ) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every event from now on (``started``: the
        ``started`` hop events too; ``hops=False``: no ``started`` or ``finished`` hop events,
        for a subscriber that counts finished hops with `count_hops`; ``conversations=False``:
        no `ConversationEvent` and no ``answered`` hop events, for one that shows finished hops
        only: when no subscriber wants those, the pump does not build them).

        Returns:
            a function that unsubscribes it (calling it twice does nothing).
        """
        self._subscribers = (*self._subscribers, subscriber)
        if started and hops:
            self._starters = (*self._starters, subscriber)
        if hops:
            self._hop_subscribers = (*self._hop_subscribers, subscriber)
        if conversations:
            self._conversation_subscribers = (*self._conversation_subscribers, subscriber)
        self._update()

        def unsubscribe() -> None:
            self._drop(subscriber)

        return unsubscribe

    def count_hops(self, tally: HopTally) -> Callable[[], None]:
        """Call ``tally(listener, sender, attempt, duration, outcome)`` for every finished hop
        from now on (the fields of its ``finished`` `HopEvent`), without building the event.
        Tallies registered together are each called, in registration order; a tally must not
        raise (it runs on the hop's time, like a subscriber, but is not guarded: keep it to
        counting).

        Returns:
            a function that stops it (calling it twice does nothing).
        """
        self._tallies = (*self._tallies, tally)
        self._update()

        def stop() -> None:
            if tally in self._tallies:
                kept = list(self._tallies)
                kept.remove(tally)
                self._tallies = tuple(kept)
                self._update()

        return stop

    def _update(self) -> None:
        self.events = bool(self._conversation_subscribers)
        self.active = bool(self._subscribers) or bool(self._tallies)
        self.starters = bool(self._starters)
        self.hop_events = bool(self._hop_subscribers)
        self.tally = _fan_out(self._tallies)

    def _drop(self, subscriber: HookSubscriber) -> None:
        self._subscribers = _without(self._subscribers, subscriber)
        self._starters = _without(self._starters, subscriber)
        self._hop_subscribers = _without(self._hop_subscribers, subscriber)
        self._conversation_subscribers = _without(self._conversation_subscribers, subscriber)
        self._update()

    def emit(self, event: Event) -> None:
        """Hand a conversation or ``answered`` event to the subscribers that want those; one
        that raises is logged and dropped."""
        self._deliver(self._conversation_subscribers, event)

    def emit_hop(self, event: HopEvent) -> None:
        """Hand a ``finished`` event to the subscribers that want hop events."""
        for subscriber in self._hop_subscribers:  # _deliver, written out: it runs every hop
            try:
                subscriber(event)
            except Exception:
                log.exception("a hook subscriber raised; it is unsubscribed: %r", subscriber)
                self._drop(subscriber)

    def emit_started(self, event: HopEvent) -> None:
        """Hand a ``started`` event to the subscribers that want those."""
        self._deliver(self._starters, event)

    def _deliver(self, subscribers: tuple[HookSubscriber, ...], event: Event) -> None:
        for subscriber in subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("a hook subscriber raised; it is unsubscribed: %r", subscriber)
                self._drop(subscriber)


def _fan_out(tallies: tuple[HopTally, ...]) -> HopTally | None:
    """One `HopTally` calling each of ``tallies`` (None for none; the tally itself for one)."""
    if len(tallies) < 2:
        return tallies[0] if tallies else None

    def every(
        listener: str, sender: str, attempt: int, duration: float, outcome: str | None
    ) -> None:
        for tally in tallies:
            tally(listener, sender, attempt, duration, outcome)

    return every


def _without(
    subscribers: tuple[HookSubscriber, ...], subscriber: HookSubscriber
) -> tuple[HookSubscriber, ...]:
    if subscriber not in subscribers:
        return subscribers
    kept = list(subscribers)
    kept.remove(subscriber)
    return tuple(kept)
