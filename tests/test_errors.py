"""The error tree: one root, reason codes from one enum, every class pickles."""

from __future__ import annotations

import pickle
import re

import pytest

import xml_pipeline
from xml_pipeline import _errors as errors
from xml_pipeline._errors import (
    BackendError,
    ConfigError,
    ConfigProblem,
    DeliveryError,
    NotFoundError,
    PayloadTypeError,
    PermanentError,
    Reason,
    RetryLater,
    SchemaViolation,
    SinkError,
    UnknownIdError,
    UsageError,
    XmlInputError,
    XmlPipelineError,
)

# one instance of every class in the tree, with every attribute set
SAMPLES: dict[type[XmlPipelineError], XmlPipelineError] = {
    XmlPipelineError: XmlPipelineError("root"),
    ConfigError: ConfigError([ConfigProblem("o.yaml", "listeners[0].name", 3, "bad")]),
    PayloadTypeError: PayloadTypeError("Order.when: type set is not supported"),
    XmlInputError: XmlInputError("bad", reason="malformed", line=2, path="/message/meta"),
    SchemaViolation: SchemaViolation("missing <name>", line=1, path="/Greeting"),
    DeliveryError: DeliveryError("late", reason="timeout", listener="a.b", thread="t1"),
    BackendError: BackendError("down", reason="backend_unreachable"),
    SinkError: SinkError("port in use", sink="prometheus"),
    NotFoundError: NotFoundError("no trace of conversation c1"),
    UsageError: UsageError("wrong"),
    UnknownIdError: UnknownIdError("no run r9", kind="run", id="r9"),
    RetryLater: RetryLater("rate limited", after_seconds=1.5),
    PermanentError: PermanentError("the record is gone"),
}


def _tree(cls: type[XmlPipelineError]) -> set[type[XmlPipelineError]]:
    found = {cls}
    for sub in cls.__subclasses__():
        found |= _tree(sub)
    return found


def test_the_samples_cover_every_class_in_the_tree() -> None:
    assert _tree(XmlPipelineError) == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_every_error_class_round_trips_through_pickle(cls: type[XmlPipelineError]) -> None:
    """A worker process or a queue can carry any of our errors; unpickling keeps everything."""
    error = SAMPLES[cls]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        back = pickle.loads(pickle.dumps(error, protocol=protocol))
        assert type(back) is cls
        assert back.args == error.args
        assert back.__dict__ == error.__dict__
        assert str(back) == str(error)


def test_a_reason_outside_the_enum_is_refused() -> None:
    with pytest.raises(ValueError, match="not_a_code"):
        DeliveryError("x", reason="not_a_code")


def test_reasons_are_enum_members_that_compare_as_text() -> None:
    error = DeliveryError("x", reason="timeout")
    assert error.reason is Reason.TIMEOUT
    assert error.reason == "timeout"
    assert str(error) == "[timeout] x"


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_each_class_default_reason_is_one_it_may_carry(cls: type[XmlPipelineError]) -> None:
    if cls is XmlPipelineError:
        return
    assert SAMPLES[cls].reason in cls.reasons or SAMPLES[cls].reason in _inherited(cls)


def _inherited(cls: type[XmlPipelineError]) -> frozenset[Reason]:
    return frozenset().union(*(base.reasons for base in cls.__mro__ if hasattr(base, "reasons")))


def test_the_docstring_tree_lists_exactly_the_codes_of_each_class() -> None:
    doc = errors.__doc__ or ""
    tree = doc[doc.index("XmlPipelineError ") :]
    blocks = re.split(r"(?m)^\s*(?:[│ ]*[├└]── )?(?=[A-Z]\w+(?:\(| ))", tree)
    listed: dict[str, set[str]] = {}
    for block in blocks:
        name = re.match(r"[A-Z]\w+", block)
        if name is None:
            continue
        words = set(re.findall(r"\b[a-z][a-z_]+\b", block))
        listed[name.group()] = {w for w in words if w in set(Reason)}
    for cls in SAMPLES:
        if cls is XmlPipelineError:
            continue
        assert listed[cls.__name__] == {str(r) for r in cls.reasons}, cls.__name__
    used = set().union(*(cls.reasons for cls in SAMPLES))
    assert used == set(Reason) - {Reason.ERROR}, "every code has a class that carries it"


def test_reason_is_public() -> None:
    assert xml_pipeline.Reason is Reason
