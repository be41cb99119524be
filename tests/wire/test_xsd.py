"""Generated documents: the XSD accepts exactly what to_xml writes; example and description."""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from tests.wire.test_payloads import (
    EVERYTHING,
    XML_TEXT,
    Address,
    Color,
    Everything,
    Inner,
    Level,
    Order,
    sample_everything,
)
from xml_pipeline._errors import SchemaViolation
from xml_pipeline._wire.payloads import (
    check_payload,
    from_element,
    from_xml,
    payload,
    payload_spec,
    to_xml,
)


def accepts(cls: type, document: bytes) -> bool:
    return bool(payload_spec(cls).schema.validate(etree.fromstring(document)))


# -- the XSD ------------------------------------------------------------------------------------


def test_xsd_text_and_compiled_schema_are_built_once_per_class() -> None:
    spec = payload_spec(Everything)
    assert spec.xsd is spec.xsd
    assert spec.xsd.startswith("<xs:schema")
    assert isinstance(spec.schema, etree.XMLSchema)
    assert spec.schema is spec.schema
    assert payload_spec(Everything) is spec


def test_xsd_declares_the_root_element_and_every_field_element() -> None:
    xsd = etree.fromstring(payload_spec(Order).xsd.encode())
    names = [e.get("name") for e in xsd.iter("{http://www.w3.org/2001/XMLSchema}element")]
    assert names == ["Order", "id", "tags", "ship_to", "city", "note"]


@settings(max_examples=100, deadline=None)
@given(EVERYTHING)
def test_xsd_accepts_everything_to_xml_writes(obj: Everything) -> None:
    assert accepts(Everything, to_xml(obj))


@pytest.mark.parametrize(
    ("document", "what"),
    [
        (b"<Order><id>x</id><ship_to><city>a</city></ship_to></Order>", "not an integer"),
        (b"<Order><id>1.0</id><ship_to><city>a</city></ship_to></Order>", "a float for an int"),
        (b"<Order><id>1</id></Order>", "missing required nested element"),
        (b"<Order><ship_to><city>a</city></ship_to></Order>", "missing required scalar"),
        (b"<Order><id>1</id><ship_to/></Order>", "missing required field of nested"),
        (b"<Order><id>1</id><ship_to><city>a</city></ship_to><x/></Order>", "unknown element"),
        (b"<Order><id>1</id><ship_to><city>a</city><x/></ship_to></Order>", "unknown nested"),
        (b"<Order><id>1</id><id>2</id><ship_to><city>a</city></ship_to></Order>", "repeated"),
        (b"<Order><ship_to><city>a</city></ship_to><id>1</id></Order>", "out of order"),
        (b"<Order><id>1</id><ship_to><city>a</city></ship_to>text</Order>", "stray text"),
        (b'<Order a="1"><id>1</id><ship_to><city>a</city></ship_to></Order>', "attribute"),
        (b"<Order xmlns='urn:x'><id>1</id><ship_to><city>a</city></ship_to></Order>", "ns"),
        (b"<Address><city>a</city></Address>", "another class's root"),
        (b"<Order><id>1<b/></id><ship_to><city>a</city></ship_to></Order>", "element in value"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_xsd_rejects_wrong_types_missing_and_unknown_elements(document: bytes, what: str) -> None:
    assert not accepts(Order, document), what
    with pytest.raises(SchemaViolation):
        from_xml(Order, document)


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("number", "1.5"),
        ("ratio", "one"),
        ("flag", "yes"),
        ("amount", "1E+5"),  # xs:decimal has no exponent
        ("amount", "NaN"),
        ("at", "2024-01-31"),
        ("at", "2024-01-31T12:00:00+14:30"),
        ("day", "2024-13-01"),
        ("color", "RED"),  # by value, not by name
        ("level", "LOW"),
        ("level", "3"),  # an integer, but not a member's value
        ("color", " red"),  # a string enum's text is exact: its whitespace rule is preserve
    ],
)
def test_xsd_rejects_a_scalar_text_of_the_wrong_type(name: str, text: str) -> None:
    good = to_xml(sample_everything())
    root = etree.fromstring(good)
    root.find(name).text = text
    assert not accepts(Everything, etree.tostring(root))


def test_schema_violation_from_xml_carries_line_and_path_of_the_first_error() -> None:
    doc = b"<Order>\n  <id>seven</id>\n  <ship_to><city>a</city></ship_to>\n</Order>"
    with pytest.raises(SchemaViolation) as info:
        from_xml(Order, doc)
    assert info.value.reason == "schema_violation"
    assert (info.value.line, info.value.path) == (2, "/Order/id")
    with pytest.raises(SchemaViolation) as again:
        from_element(Order, etree.fromstring(doc))
    assert (again.value.line, again.value.path) == (2, "/Order/id")


# -- example and description -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Everything, Order, Inner])
def test_example_document_validates_and_binds(cls: type) -> None:
    example = payload_spec(cls).example()
    assert accepts(cls, example)
    obj: object = from_xml(cls, example)
    check_payload(obj)


def test_example_uses_field_defaults_where_there_are_some() -> None:
    @payload
    @dataclass
    class Defaults:
        count: int = 3
        label: str = "hello"
        tags: list[str] = field(default_factory=list)

    assert from_xml(Defaults, payload_spec(Defaults).example()) == Defaults(3, "hello", ["text"])


def test_describe_names_the_real_elements_and_how_often_they_occur() -> None:
    text = payload_spec(Order).describe()
    assert text.splitlines() == [
        "<Order>",
        "  <id> integer (required)",
        "  <tags> string (repeated, zero or more times)",
        "  <ship_to> (required) containing:",
        "    <city> string (required)",
        "  <note> string (optional, omit when absent)",
    ]


def test_describe_starts_with_the_docstring_and_lists_enum_values_and_defaults() -> None:
    text = payload_spec(Everything).describe()
    assert text.splitlines()[0] == "<Everything>: One field of every supported kind."
    assert "<level> one of 1, 20 (required)" in text
    assert "<defaulted> integer (optional, default 5)" in text
    assert text.count("\n") + 1 == 1 + 20 + 3 * 2  # fields, then 2 per Inner field


# -- what check_payload accepts, the XSD accepts ---------------------------------------------


class Other(enum.Enum):
    RED = "red"


class _NoOffset(tzinfo):
    def utcoffset(self, dt: datetime | None) -> None:
        return None

    def dst(self, dt: datetime | None) -> None:
        return None

    def tzname(self, dt: datetime | None) -> None:
        return None


ANY_TEXT = st.text(max_size=8)  # surrogates and control characters included
ODD_OFFSETS = st.one_of(
    st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))),
    st.integers(-86_399, 86_399).map(lambda s: timezone(timedelta(seconds=s))),
    st.just(timezone(timedelta(microseconds=1))),
    st.just(_NoOffset()),
)
WRONG_DECIMALS = st.sampled_from(
    [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity"), Decimal("1E+60")]
)
JUNK = st.one_of(st.none(), st.just(object()), st.just(b"bytes"), st.just({"a": 1}))


def wrongish(
    right: st.SearchStrategy[object], *wrong: st.SearchStrategy[object]
) -> st.SearchStrategy[object]:
    return st.one_of(right, *wrong, JUNK)


INTS = wrongish(
    st.integers(),
    st.booleans(),
    st.floats(),
    st.decimals(),
    st.sampled_from([10**4000, 10**5000, -(10**5000)]),
    ANY_TEXT,
)
FLOATS = wrongish(st.floats(), st.integers(), st.booleans(), st.decimals(), ANY_TEXT)
DECIMALS = wrongish(st.decimals(), WRONG_DECIMALS, st.integers(), st.floats(), ANY_TEXT)
TEXTS = wrongish(XML_TEXT, ANY_TEXT, st.integers(), st.sampled_from(list(Color)))
BOOLS = wrongish(st.booleans(), st.integers(0, 1), st.sampled_from(["true", "1"]))
DATETIMES = wrongish(
    st.datetimes(),
    st.datetimes(timezones=ODD_OFFSETS),
    st.dates(),
    st.sampled_from(["2024-01-31T12:00:00"]),
)
DATES = wrongish(st.dates(), st.datetimes(), st.sampled_from(["2024-01-31"]))
LEVELS = wrongish(st.sampled_from(Level), st.sampled_from([1, 20, "1"]), st.sampled_from(Color))
COLORS = wrongish(st.sampled_from(Color), st.sampled_from(Other), st.just("red"))
WRONG_INNERS = st.builds(Inner, label=TEXTS, day=st.one_of(DATES, st.none()))
INNERS = wrongish(WRONG_INNERS, st.just(Address("not an Inner")))


def lists_of(items: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return wrongish(
        st.lists(items, max_size=3),
        st.lists(items, max_size=3).map(tuple),
        st.lists(items, max_size=2).map(lambda xs: type("Sub", (list,), {})(xs)),
        ANY_TEXT,
    )


WRONGISH_FIELDS = {
    "text": TEXTS,
    "number": INTS,
    "ratio": FLOATS,
    "flag": BOOLS,
    "amount": DECIMALS,
    "at": DATETIMES,
    "day": DATES,
    "color": COLORS,
    "level": LEVELS,
    "inner": INNERS,
    "maybe_text": TEXTS,
    "maybe_number": INTS,
    "maybe_inner": INNERS,
    "texts": lists_of(TEXTS),
    "numbers": lists_of(INTS),
    "amounts": lists_of(DECIMALS),
    "levels": lists_of(LEVELS),
    "inners": lists_of(INNERS),
    "defaulted": INTS,
    "stamps": lists_of(DATETIMES),
}


@st.composite
def wrongish_everything(draw: st.DrawFn) -> Everything:
    """A valid object with up to three fields drawn from a right-and-wrong mix.

    Changing a few fields, not all, keeps a good share of the objects acceptable, so that both
    sides of the property are exercised.
    """
    obj = draw(EVERYTHING)
    names = draw(st.sets(st.sampled_from(sorted(WRONGISH_FIELDS)), max_size=3))
    changes: dict[str, Any] = {n: draw(WRONGISH_FIELDS[n]) for n in sorted(names)}
    return dataclasses.replace(obj, **changes)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wrongish_everything())
def test_whatever_check_payload_accepts_the_xsd_accepts_once_written(obj: Everything) -> None:
    schema = payload_spec(Everything).schema
    try:
        check_payload(obj)
    except SchemaViolation:
        checked = False
    else:
        checked = True
    event(f"check_payload accepts: {checked}")
    try:
        written = to_xml(obj)
    except SchemaViolation:
        assert not checked, "check_payload accepted what to_xml refuses"
        return
    assert schema.validate(etree.fromstring(written)), (written, schema.error_log.last_error)


@pytest.mark.parametrize(
    "obj",
    [
        sample_everything(ratio=math.nan),
        sample_everything(ratio=-math.inf),
        sample_everything(number=10**1000),
        sample_everything(amount=Decimal("-0E-30")),
        sample_everything(at=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))),
        sample_everything(at=datetime(9999, 12, 31, 23, 59, tzinfo=timezone(-timedelta(hours=14)))),
        sample_everything(at=datetime(2024, 1, 1, tzinfo=_NoOffset())),
        sample_everything(text="\U0010fffd\ufffd\ud7ff"),
    ],
    ids=["nan", "-inf", "1000-digit int", "-0E-30", "+14:00", "-14:00", "no offset", "edges"],
)
def test_edge_values_check_payload_accepts_are_written_as_valid_documents(obj: Everything) -> None:
    check_payload(obj)
    assert accepts(Everything, to_xml(obj))


def test_date_field_refuses_a_datetime_which_the_xsd_would_refuse() -> None:
    obj = sample_everything(day=datetime(2024, 1, 31, 12, 0))
    with pytest.raises(SchemaViolation, match="/Everything/day"):
        check_payload(obj)


def test_schema_of_each_class_is_independent() -> None:
    assert not accepts(Inner, to_xml(Order(1, [], Address("x"))))
    assert accepts(Inner, to_xml(Inner("x", date(2024, 1, 1))))
