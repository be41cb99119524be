"""Seeing every hop: a small subscription API with typed events, free when nobody listens.

`Hooks` is the one way to observe a running organism from inside the process: the testing
helpers (`xml_pipeline.testing.capture`), and later the run registry, metrics and traces,
subscribe to it. The pump builds an event only when somebody subscribed (one truth test per hop
otherwise), and calls subscribers synchronously on the event loop, in subscription order: a
subscriber must be quick and must not block (hand the event to a queue of your own for slow
work). A subscriber that raises is logged and unsubscribed; the hop goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["ConversationEvent", "Event", "Hooks", "HopEvent"]

log = logging.getLogger("xml_pipeline.hooks")


@dataclass(frozen=True, slots=True)
class HopEvent:
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
        at: the event loop's clock (seconds, ``loop.time()``) when the event happened.
        duration: seconds from ``started`` to ``finished`` (``None`` on ``started``).
        outcome: on ``finished``: ``None`` when the handler returned and its outputs were
            accepted, else the failure's reason code (``handler_error``, ``timeout``...);
            ``"ended"`` when the conversation ended while the handler ran.
        caller_thread: the thread of the call that made ``thread``'s call (the caller's
            thread), or ``None`` when ``thread`` is the conversation's first call, made from
            outside. The hops of one conversation form a tree through it.
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


@dataclass(frozen=True, slots=True)
class ConversationEvent:
    """A conversation opened, or ended with its outcome.

    Attributes:
        kind: ``"opened"`` or ``"ended"``.
        conversation: its id.
        listener: the listener it was started at.
        at: the event loop's clock (seconds) when it happened.
        outcome: on ``ended``: ``None`` when it was answered, else the reason code.
    """

    kind: Literal["opened", "ended"]
    conversation: str
    listener: str
    at: float
    outcome: str | None = None


Event = HopEvent | ConversationEvent
Subscriber = Callable[[Event], None]


class Hooks:
    """The subscribers of one organism's events."""

    __slots__ = ("_subscribers", "active")

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self.active = False  # whether anybody listens: the pump builds no event otherwise

    def __bool__(self) -> bool:
        """Whether anybody listens (as `active`)."""
        return self.active

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call ``subscriber(event)`` for every event from now on.

        Returns:
            a function that unsubscribes it (calling it twice does nothing).
        """
        self._subscribers.append(subscriber)
        self.active = True

        def unsubscribe() -> None:
            self._drop(subscriber)

        return unsubscribe

    def _drop(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
        self.active = bool(self._subscribers)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every subscriber; one that raises is logged and dropped."""
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("a hook subscriber raised; it is unsubscribed: %r", subscriber)
                self._drop(subscriber)
