"""Hops made visible to people: one log line per hop at DEBUG.

`HopLog` is a `Hooks` subscriber, so it costs nothing unless installed: it logs each finished
hop on the ``xml_pipeline.hops`` logger, as ``hop _external -> greeter <Greeting> conv 5b1c0e7a
0.081 ms ok``. An `Organism` subscribes one when it starts if that logger is enabled for DEBUG
then (`hop_log_enabled`); otherwise the hot path builds no event at all. A conversation's hop
tree is drawn by `xml_pipeline.metrics.trace` (`build_tree`), one builder for every trace.
"""

from __future__ import annotations

import logging
import math
import time

from xml_pipeline._handlers import ErrorReport
from xml_pipeline._runtime.hooks import Event, HopEvent
from xml_pipeline._wire.payloads import payload_spec

__all__ = ["HOP_LOG", "HopLog", "hop_log_enabled"]

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
