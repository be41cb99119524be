"""The W3C traceparent an envelope may carry: checked by the pump, never a refusal."""

from __future__ import annotations

import pytest

from xml_pipeline._wire.envelope import ENVELOPE_NS, Envelope
from xml_pipeline._wire.traceparent import traceparent_problem

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def envelope(meta_extra: str) -> bytes:
    return (
        f'<message xmlns="{ENVELOPE_NS}"><meta><from>a</from><to>b</to><thread>t</thread>'
        f'{meta_extra}</meta><Ping xmlns=""><n>1</n></Ping></message>'
    ).encode()


@pytest.mark.parametrize(
    "value",
    [
        GOOD,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",  # not sampled
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",  # a later version
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ],
)
def test_well_formed_traceparents_are_taken(value: str) -> None:
    assert traceparent_problem(value) is None


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "0 characters"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "characters"),
        (GOOD + "-x", "a version 00 traceparent has 55"),
        ("ff" + GOOD[2:], "version 'ff'"),
        ("0g" + GOOD[2:], "version '0g'"),
        (GOOD.upper(), "lowercase"),
        (GOOD.replace("-", "_", 1), "separated by '-'"),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", "trace-id is all zeros"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", "parent-id is all zeros"),
        ("00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01", "trace-id"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x", "flags"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", "beyond trace-flags"),
    ],
)
def test_malformed_traceparents_say_why(value: str, why: str) -> None:
    problem = traceparent_problem(value)
    assert problem is not None and why in problem


def test_an_envelope_with_a_traceparent_round_trips_and_one_without_is_unchanged() -> None:
    carried = Envelope.from_bytes(envelope(f"<traceparent>{GOOD}</traceparent>"))
    assert carried.traceparent == GOOD and (carried.sender, carried.to) == ("a", "b")
    assert Envelope.from_bytes(carried.to_bytes()).traceparent == GOOD
    plain = Envelope.from_bytes(envelope(""))
    assert plain.traceparent == "" and b"traceparent" not in plain.to_bytes()
    assert plain.to_bytes() == envelope("")  # v1 bytes, as before


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ("<traceparent>nonsense</traceparent>", "nonsense"),
        ("<traceparent><x>y</x></traceparent>", "y"),
        (f"<traceparent>{GOOD}</traceparent><traceparent>{GOOD}</traceparent>", f"{GOOD},{GOOD}"),
        ("<traceparent/>", ""),
    ],
)
def test_an_odd_traceparent_never_refuses_the_envelope(extra: str, kept: str) -> None:
    env = Envelope.from_bytes(envelope(extra))
    assert env.to == "b" and env.traceparent == kept
    assert kept == "" or traceparent_problem(kept) is not None
