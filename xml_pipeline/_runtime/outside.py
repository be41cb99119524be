"""Envelopes from outside the organism (`Organism.inject`, `Organism.request_envelope`):
parsed with the guarded parser, their target and payload tag checked, a forged sender and a
malformed trace context dealt with, every refusal counted in ``stats.rejected`` and logged.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping

from xml_pipeline._errors import DeliveryError, UsageError, XmlPipelineError
from xml_pipeline._runtime.hops import ListenerState
from xml_pipeline._runtime.outcomes import Counters
from xml_pipeline._runtime.outputs import no_route
from xml_pipeline._wire.envelope import Envelope
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline._wire.payloads import from_element
from xml_pipeline._wire.traceparent import traceparent_problem

__all__ = ["OutsideEnvelopes"]

log = logging.getLogger("xml_pipeline.pump")


class OutsideEnvelopes:
    """Reads the envelopes sent to the listeners ``states`` from outside, within ``limits``;
    refusals are counted in ``counters``."""

    __slots__ = ("_counters", "_limits", "_reserved", "_states")

    def __init__(
        self, states: Mapping[str, ListenerState], limits: ParseLimits, counters: Counters
    ) -> None:
        self._states = states
        self._limits = limits
        self._counters = counters
        # sender names an envelope from outside may not claim: listener names as people and
        # terminals compare them (case, surrounding spaces, compatibility forms)
        self._reserved = {_normal_name(name) for name in states}

    def read(
        self, data: bytes | str, where: str = "request_envelope()"
    ) -> tuple[ListenerState, object, str, str]:
        """The target, payload object, sender and trace context of an envelope from outside,
        checked with the guarded parser; refusals are counted and logged. A malformed
        ``traceparent`` is no refusal: it is counted, logged and left out ("").

        Raises:
            UsageError, XmlInputError, SchemaViolation, DeliveryError (see `Organism.inject`).
        """
        if not isinstance(data, bytes | str):
            raise UsageError(
                f"{where} takes a v1 envelope as bytes or str, not {type(data).__name__}"
            )
        try:
            env = Envelope.from_bytes(data, self._limits)
            state = self._states.get(env.to)
            if state is None:
                raise no_route(env.to, self._states)
            if env.payload_tag != state.spec.tag:
                raise DeliveryError(
                    f"{env.to!r} accepts <{state.spec.tag}>, not <{env.payload_tag}>",
                    reason="no_route", listener=env.to,
                )  # fmt: skip
            sender = env.sender
            if sender and self.is_reserved(sender):
                raise DeliveryError(
                    f"an envelope from outside claims to come from {sender!r}, a listener or "
                    "reserved name (names compare ignoring case, surrounding spaces and a "
                    "leading '_'); leave <from> empty or name the outside sender",
                    reason="forged_sender", listener=env.to,
                )  # fmt: skip
            obj: object = from_element(state.listener.payload_class, env.payload)
        except XmlPipelineError as exc:
            self._counters.rejected += 1
            # inject()'s refusals are logged for operators; request_envelope()'s go back to a
            # gateway's caller as its answer, and a public gateway must not let anyone fill the
            # log with junk: debug only (both are counted in stats.rejected)
            level = logging.DEBUG if where == "request_envelope()" else logging.WARNING
            log.log(level, "%s refused an envelope: %s", where, exc)
            raise
        traceparent = env.traceparent
        if traceparent and (problem := traceparent_problem(traceparent)) is not None:
            self._counters.traceparents_ignored += 1
            level = logging.DEBUG if where == "request_envelope()" else logging.WARNING
            log.log(
                level, "%s ignored the envelope's traceparent %r: %s",
                where, traceparent[:80], problem,
            )  # fmt: skip
            traceparent = ""
        return state, obj, sender, traceparent

    def is_reserved(self, sender: str) -> bool:
        """Whether ``sender`` is a name an envelope from outside may not claim: a listener's
        (compared as people read names), one starting with ``_``, or empty."""
        name = _normal_name(sender)
        return name in self._reserved or name.startswith("_") or not name


def _normal_name(name: str) -> str:
    """A name as people compare it: compatibility forms folded, case folded, spaces trimmed."""
    return unicodedata.normalize("NFKC", name).strip().casefold()
