"""Checking what a handler returned before anything of it is routed.

A handler returns ``None``, a `HandlerResponse`, or a list of them; each call must name a peer
of the listener, whose payload class it must be, and each payload must conform to its field
spec (every payload a listener receives conforms to its schema). The check writes the payload's
XML in the same pass when history needs it (`to_xml` checks as it writes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from difflib import get_close_matches

from xml_pipeline._errors import DeliveryError, PayloadTypeError, Reason, SchemaViolation
from xml_pipeline._handlers import HandlerResponse
from xml_pipeline._runtime.hops import ListenerState
from xml_pipeline._runtime.invoker import BoundOutputs
from xml_pipeline._runtime.retry import AttemptFailure
from xml_pipeline._wire.payloads import check_payload, payload_spec, to_xml

__all__ = ["Failure", "check_outputs", "no_route", "wrong_class"]

Outputs = list[tuple[HandlerResponse, bytes | None]]


class Failure(Exception):
    """A hop failed (its handler raised, or its output was refused) with this reason.

    ``error`` is what the retry policy is told about the exception (types, `RetryLater`,
    `PermanentError`), when the handler raised one.
    """

    def __init__(self, reason: str, message: str, error: AttemptFailure | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.error = error


def check_outputs(
    state: ListenerState,
    result: object,
    states: Mapping[str, ListenerState],
    history: bool,
) -> Outputs:
    """The handler's outputs, each checked, with its payload XML when ``history`` needs it.

    Raises:
        Failure: ``invalid_response``, ``no_route``, ``peer_denied`` or ``schema_violation``.
    """
    if type(result) is HandlerResponse:  # the usual case: one call or one answer
        return [(result, _check(state, result, states, history))]
    if result is None:
        return []
    if type(result) is BoundOutputs:
        return [(out, _check(state, out, states, history, xml)) for out, xml in result.items]
    if isinstance(result, (list, tuple)) and all(type(r) is HandlerResponse for r in result):
        outputs: Sequence[HandlerResponse] = result
    else:
        raise Failure(
            Reason.INVALID_RESPONSE,
            f"{state.name!r} returned {type(result).__name__}; return None, a "
            "HandlerResponse or a list of them (never an envelope)",
        )
    return [(out, _check(state, out, states, history)) for out in outputs]


def _check(
    state: ListenerState,
    out: HandlerResponse,
    states: Mapping[str, ListenerState],
    history: bool,
    xml: bytes | None = None,
) -> bytes | None:
    """Check one output: route, peers, payload. ``xml``: what the payload was bound from
    after XSD validation (`BoundOutputs`), so it is valid and already written."""
    if out.to is not None:
        target = states.get(out.to)
        if target is None:
            raise Failure(
                Reason.NO_ROUTE, f"{state.name!r} called {no_route(out.to, states).message}"
            )
        if out.to not in state.peers:
            raise Failure(
                Reason.PEER_DENIED,
                f"{state.name!r} may not call {out.to!r}: it is not among its peers "
                f"{sorted(state.peers)}; add it to peers in organism.yaml",
            )
        if type(out.payload) is not target.listener.payload_class:
            sent = f"{state.name!r} called it"
            raise Failure(
                Reason.NO_ROUTE,
                wrong_class(out.to, target.listener.payload_class, out.payload, sent),
            )
    if xml is not None:
        return xml if history else None
    try:
        if history:  # to_xml checks each value as check_payload does: one pass
            return to_xml(out.payload)
        check_payload(out.payload)
        return None
    except SchemaViolation as exc:
        raise Failure(Reason.SCHEMA_VIOLATION, f"{state.name!r} sent {exc.message}") from None
    except PayloadTypeError:  # an answer that is no payload (a call's class was checked)
        raise Failure(
            Reason.INVALID_RESPONSE,
            f"{state.name!r} answered with a {type(out.payload).__name__}, not a @payload object",
        ) from None


def no_route(to: str, names: Collection[str]) -> DeliveryError:
    """The error for a call to a listener nobody declared (``names``: the listeners, or a
    mapping keyed by them), with a did-you-mean; the CLI's ``@listener`` lines use it too."""
    folded = {name.casefold(): name for name in names}  # 'Greeter' is close to 'greeter'
    close = get_close_matches(to.casefold(), list(folded), n=1)
    hint = f"; did you mean {folded[close[0]]!r}?" if close else f"; listeners: {sorted(names)}"
    return DeliveryError(f"no listener named {to!r}{hint}", reason="no_route", listener=to)


def wrong_class(to: str, accepted: type, payload: object, sent: str) -> str:
    """Why ``payload`` cannot go to ``to``; for two classes of one tag, which is which."""
    got = type(payload)
    tag, wanted = payload_spec(got).tag, payload_spec(accepted).tag
    if tag != wanted:
        return f"{to!r} accepts <{wanted}>, not <{tag}> ({sent} with <{tag}>)"
    return (
        f"{to!r} accepts <{wanted}> of class {_where(accepted)}, and {sent} with another class "
        f"of that name, {_where(got)}; build the payload from the listener's own class "
        f"(Organism.listeners gives each listener's payload_class)"
    )


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
