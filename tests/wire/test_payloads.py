"""@payload classes: the exact XML they write, the round trip, and what they refuse.

The hypothesis strategies for every supported field type live here and are reused by
``test_schema`` and ``test_envelope``.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from xml_pipeline._errors import PayloadTypeError, SchemaViolation, XmlInputError
from xml_pipeline._wire.payloads import (
    _bind,
    _check,
    _write,
    check_payload,
    from_element,
    from_xml,
    is_payload,
    payload,
    payload_spec,
    to_element,
    to_xml,
)

# -- classes used across the XML tests --------------------------------------------------------


@payload
@dataclass
class Address:
    city: str


@payload
@dataclass
class Order:
    id: int
    tags: list[str]
    ship_to: Address
    note: str | None = None


class Color(enum.Enum):
    RED = "red"
    ODD = " <&]]>\r odd "


class Level(enum.Enum):
    LOW = 1
    HIGH = 20


@payload
@dataclass
class Inner:
    label: str
    day: date | None = None


@payload
@dataclass
class Everything:
    """One field of every supported kind."""

    text: str
    number: int
    ratio: float
    flag: bool
    amount: Decimal
    at: datetime
    day: date
    color: Color
    level: Level
    inner: Inner
    maybe_text: str | None
    maybe_number: int | None
    maybe_inner: Inner | None
    texts: list[str]
    numbers: list[int]
    amounts: list[Decimal]
    levels: list[Level]
    inners: list[Inner]
    defaulted: int = 5
    stamps: list[datetime] = field(default_factory=list)


# -- strategies ---------------------------------------------------------------------------------

XML_CHARS = st.one_of(
    st.sampled_from("\t\n\r &<>]\"'"),
    st.characters(min_codepoint=0x20, max_codepoint=0xD7FF),
    st.characters(min_codepoint=0xE000, max_codepoint=0xFFFD),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),  # astral
)
XML_TEXT = st.one_of(
    st.text(XML_CHARS, max_size=30),
    st.sampled_from(["", " ", " lead", "trail ", "\r", "\r\n", "a&b", "<x/>", "]]>", "😀"]),
)
BIG_INTS = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**80), max_value=10**80),
    st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**300, -(10**300)]),
)
FLOATS = st.floats(allow_nan=False)  # includes inf, -inf and -0.0
DECIMALS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False),
    st.builds(
        lambda sign, digits, exponent: Decimal((sign, digits, exponent)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), min_size=1, max_size=30).map(tuple),
        st.integers(-40, 40),
    ),
    st.sampled_from([Decimal("1E+5"), Decimal("-0"), Decimal("1.50"), Decimal("-0E-3")]),
)
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
DATETIMES = st.one_of(st.datetimes(), st.datetimes(timezones=OFFSETS))
INNERS = st.builds(Inner, label=XML_TEXT, day=st.none() | st.dates())
EVERYTHING = st.builds(
    Everything,
    text=XML_TEXT,
    number=BIG_INTS,
    ratio=FLOATS,
    flag=st.booleans(),
    amount=DECIMALS,
    at=DATETIMES,
    day=st.dates(),
    color=st.sampled_from(Color),
    level=st.sampled_from(Level),
    inner=INNERS,
    maybe_text=st.none() | XML_TEXT,
    maybe_number=st.none() | BIG_INTS,
    maybe_inner=st.none() | INNERS,
    texts=st.lists(XML_TEXT, max_size=3),
    numbers=st.lists(BIG_INTS, max_size=3),
    amounts=st.lists(DECIMALS, max_size=3),
    levels=st.lists(st.sampled_from(Level), max_size=3),
    inners=st.lists(INNERS, max_size=2),
    defaulted=BIG_INTS,
    stamps=st.lists(DATETIMES, max_size=2),
)


def sample_everything(**changes: Any) -> Everything:
    """A valid `Everything`, with ``changes`` applied."""
    base = Everything(
        text="t",
        number=1,
        ratio=0.5,
        flag=True,
        amount=Decimal("2.5"),
        at=datetime(2024, 1, 31, 12, 0),
        day=date(2024, 1, 31),
        color=Color.RED,
        level=Level.LOW,
        inner=Inner("in"),
        maybe_text=None,
        maybe_number=None,
        maybe_inner=None,
        texts=[],
        numbers=[],
        amounts=[],
        levels=[],
        inners=[],
    )
    return dataclasses.replace(base, **changes)


# -- the bytes written ----------------------------------------------------------------------------


def test_order_is_written_as_exactly_the_documented_bytes() -> None:
    order = Order(id=7, tags=["a", "b"], ship_to=Address(city="Oslo"))
    assert to_xml(order) == (
        b"<Order><id>7</id><tags>a</tags><tags>b</tags><ship_to><city>Oslo</city></ship_to></Order>"
    )


def test_tag_argument_renames_the_root_element_only() -> None:
    @payload(tag="Calc")
    @dataclass
    class Calculation:
        a: int

    assert to_xml(Calculation(a=1)) == b"<Calc><a>1</a></Calc>"
    assert from_xml(Calculation, b"<Calc><a>1</a></Calc>") == Calculation(a=1)
    assert payload_spec(Calculation).tag == "Calc"


def test_optional_none_is_omitted_and_a_value_is_written() -> None:
    assert b"<note>" not in to_xml(Order(1, [], Address("x")))
    assert b"<note>hi</note>" in to_xml(Order(1, [], Address("x"), note="hi"))


def test_empty_list_writes_no_element() -> None:
    assert to_xml(Order(1, [], Address("x"))) == (
        b"<Order><id>1</id><ship_to><city>x</city></ship_to></Order>"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, b"<flag>true</flag>"),
        (Decimal("1E+5"), b"<amount>100000</amount>"),
        (Decimal("-0"), b"<amount>-0</amount>"),
        (float("inf"), b"<ratio>INF</ratio>"),
        (float("-inf"), b"<ratio>-INF</ratio>"),
        (-0.0, b"<ratio>-0.0</ratio>"),
        (
            datetime(2024, 1, 31, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            b"<at>2024-01-31T12:00:00+05:30</at>",
        ),
        (datetime(2024, 1, 31, 12, 0, 0, 5), b"<at>2024-01-31T12:00:00.000005</at>"),
        (Color.ODD, b"<color> &lt;&amp;]]&gt;&#13; odd </color>"),
        (Level.HIGH, b"<level>20</level>"),
        ("a\r\nb & <c>", b"<text>a&#13;\nb &amp; &lt;c&gt;</text>"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_scalar_is_written_as_its_xsd_lexical_form(value: object, text: bytes) -> None:
    name = {
        bool: "flag",
        Decimal: "amount",
        float: "ratio",
        datetime: "at",
        Color: "color",
        Level: "level",
        str: "text",
    }[type(value)]
    written = to_xml(sample_everything(**{name: value}))
    assert text in written
    assert from_xml(Everything, written) == sample_everything(**{name: value})


# -- round trip ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(EVERYTHING)
def test_round_trip_is_exact_for_every_supported_type(obj: Everything) -> None:
    data = to_xml(obj)
    back = from_xml(Everything, data)
    assert back == obj
    assert to_xml(back) == data  # writing is stable, too
    for mine, theirs in zip([obj.at, *obj.stamps], [back.at, *back.stamps], strict=True):
        assert mine.utcoffset() == theirs.utcoffset()  # the offset, not just the instant


@settings(max_examples=50, deadline=None)
@given(EVERYTHING)
def test_from_element_of_to_element_round_trips_without_validation(obj: Everything) -> None:
    assert from_element(Everything, to_element(obj), validate=False) == obj


def test_missing_element_with_default_takes_the_default() -> None:
    obj = from_xml(
        Everything,
        to_xml(sample_everything()).replace(b"<defaulted>5</defaulted>", b""),
    )
    assert obj.defaulted == 5
    assert obj.stamps == []


@settings(max_examples=100, deadline=None)
@given(EVERYTHING)
def test_fast_binder_agrees_with_the_general_binder_on_what_to_xml_writes(
    obj: Everything,
) -> None:
    # from_element binds with generated straight-line code and leaves any other shape to the
    # general binder; where the fast one returns, both must give the same object
    spec = payload_spec(Everything)
    element = to_element(obj)
    assert spec._fast_bind(element) == obj
    assert _bind(spec, element, "/Everything") == obj


@settings(max_examples=100, deadline=None)
@given(EVERYTHING)
def test_generated_writer_and_check_agree_with_the_general_ones(obj: Everything) -> None:
    # to_xml and check_payload run code generated per class and fall back to the general
    # walkers only to name what is wrong; on valid objects both must do the same
    spec = payload_spec(Everything)
    parts: list[str] = []
    _write(spec, spec.tag, obj, parts, "/Everything")
    assert to_xml(obj) == "".join(parts).encode()
    assert spec._fast_check(obj) is None
    _check(spec, obj, "/Everything")


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("number", " 12 ", 12),
        ("flag", " 1 ", True),
        ("flag", "0", False),
        ("amount", "\n 2.50 ", Decimal("2.50")),
        ("at", " 2024-01-31T12:00:00Z ", datetime(2024, 1, 31, 12, tzinfo=UTC)),
        ("day", "\t2024-02-29\t", date(2024, 2, 29)),
    ],
)
def test_values_in_other_lexical_forms_than_to_xml_writes_bind_to_their_value(
    name: str, text: str, expected: object
) -> None:
    # the fast binder reads only what to_xml writes; the general one takes over for these
    element = to_element(sample_everything())
    element.find(name).text = text
    bound = from_element(Everything, element, validate=False)
    assert getattr(bound, name) == expected
    assert bound == _bind(payload_spec(Everything), element, "/Everything")


def test_an_absent_optional_or_list_field_reads_back_as_none_or_empty_not_its_default() -> None:
    # to_xml writes None and [] as no element at all, so that is what an absent one means;
    # otherwise a round trip of None would come back as the default
    @payload
    @dataclass
    class Settings:
        retries: int | None = 3
        hosts: list[str] = field(default_factory=lambda: ["localhost"])
        port: int = 80

    for obj in (Settings(None, []), Settings(4, ["a", "b"], 8080), Settings()):
        assert from_xml(Settings, to_xml(obj)) == obj
    assert from_xml(Settings, b"<Settings/>") == Settings(None, [], 80)


def test_classes_with_keyword_only_fields_or_their_own_init_bind_by_name() -> None:
    @payload
    @dataclass
    class KeywordOnly:
        a: int
        b: str = field(kw_only=True)
        c: int = 0

    @payload
    @dataclass(init=False)
    class OwnInit:
        a: int
        b: str

        def __init__(self, b: str, a: int) -> None:  # another order than the fields
            self.a, self.b = a, b

    assert from_xml(KeywordOnly, to_xml(KeywordOnly(1, b="x", c=2))) == KeywordOnly(1, b="x", c=2)
    assert from_xml(OwnInit, b"<OwnInit><a>1</a><b>x</b></OwnInit>") == OwnInit("x", 1)


def test_missing_optional_and_list_elements_bind_to_none_and_empty() -> None:
    obj = from_xml(Order, b"<Order><id>1</id><ship_to><city>x</city></ship_to></Order>")
    assert obj == Order(1, [], Address("x"), note=None)


def test_is_payload_accepts_classes_and_instances_only_of_decorated_classes() -> None:
    @dataclass
    class Plain:
        a: int

    class Sub(Order):
        pass

    assert is_payload(Order)
    assert is_payload(Order(1, [], Address("x")))
    assert not is_payload(Plain)
    assert not is_payload(Plain(1))
    assert not is_payload(Sub)  # a subclass is a different message type until decorated
    assert not is_payload("Order")


def test_payload_spec_of_a_plain_class_raises_payload_type_error() -> None:
    with pytest.raises(PayloadTypeError, match="not a payload class"):
        payload_spec(int)
    with pytest.raises(PayloadTypeError):
        to_xml(object())


# -- unsupported classes fail at decoration -------------------------------------------------


@dataclass
class _Node:
    value: int
    child: _Node | None = None


@pytest.mark.parametrize(
    ("annotation", "type_text"),
    [
        (dict[str, int], "dict"),
        (set[int], "set"),
        (tuple[int, int], "tuple"),
        (bytes, "bytes"),
        (complex, "complex"),
        (typing.Optional[list[int]], "list[int]"),  # noqa: UP045 - the spelling under test
        (list[list[int]], "list[list[int]]"),
        (typing.Union[int, str], "Union[int, str]"),  # noqa: UP007 - the spelling under test
        (int | str, "int | str"),
        (Any, "Any"),
        (list, "list"),
        (object, "object"),
    ],
    ids=str,
)
def test_unsupported_field_type_fails_at_decoration_naming_class_field_and_type(
    annotation: object, type_text: str
) -> None:
    cls = dataclasses.make_dataclass("Bad", [("field_x", annotation)])
    with pytest.raises(PayloadTypeError) as info:
        payload(cls)
    message = str(info.value)
    assert info.value.reason == "unsupported_type"
    assert "Bad.field_x" in message
    assert type_text in message


def test_recursive_dataclass_fails_naming_field_and_type() -> None:
    with pytest.raises(PayloadTypeError, match=r"_Node\.child.*recursive"):
        payload(_Node)


def test_self_referencing_class_decorated_at_definition_fails_as_recursive() -> None:
    with pytest.raises(PayloadTypeError, match=r"Node\.child: type Node \| None.*recursive"):

        @payload
        @dataclass
        class Node:
            value: int
            child: Node | None = None


def test_annotation_naming_an_undefined_class_fails_naming_the_field() -> None:
    with pytest.raises(PayloadTypeError, match=r"Late\.other: cannot resolve type Later"):

        @payload
        @dataclass
        class Late:
            other: Later  # type: ignore[name-defined]  # noqa: F821


def test_non_dataclass_fails_at_decoration_naming_the_class() -> None:
    class NotData:
        a: int

    with pytest.raises(PayloadTypeError, match="NotData must be a dataclass"):
        payload(NotData)


def test_enum_with_values_xml_cannot_carry_fails_at_decoration() -> None:
    class Weird(enum.Enum):
        A = 1.5

    with pytest.raises(PayloadTypeError, match=r"Weird\.A"):
        payload(dataclasses.make_dataclass("HasWeird", [("w", Weird)]))


@pytest.mark.parametrize("tag", ["1abc", "has space", "xmlThing", "a:b"])
def test_tag_that_is_not_an_xml_name_fails_at_decoration(tag: str) -> None:
    with pytest.raises(PayloadTypeError, match="not usable as an XML element name"):
        payload(tag=tag)(dataclasses.make_dataclass("T", [("a", int)]))


def test_field_name_starting_with_xml_fails_at_decoration() -> None:
    with pytest.raises(PayloadTypeError, match=r"T\.xml_id"):
        payload(dataclasses.make_dataclass("T", [("xml_id", int)]))


# -- a class that cannot be a payload is reported at the user's line ----------------------

HERE = os.path.relpath(__file__)


def line_of(marker: str) -> int:
    """The line of this file that ends with the comment ``# <marker>``."""
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    return next(n for n, text in enumerate(lines, 1) if text.endswith(f"# {marker}"))


def refusal(build: Callable[[], object]) -> PayloadTypeError:
    with pytest.raises(PayloadTypeError) as info:
        build()
    return info.value


def test_unsupported_field_type_is_reported_at_the_line_of_its_annotation() -> None:
    def build() -> None:
        @payload
        @dataclass
        class Order:
            id: int
            when: set[int]  # the when annotation

    error = refusal(build)
    where = f"{HERE}:{line_of('the when annotation')}"
    assert str(error).startswith(
        f"[unsupported_type] {where}: Order.when: type set[int] is not supported (supported: str,"
    )
    assert (error.file, error.line) == (HERE, line_of("the when annotation"))
    assert "change the annotation" in str(error)


def test_class_that_is_not_a_dataclass_is_reported_at_its_class_line() -> None:
    def build() -> None:
        @payload
        class Plain:  # the plain class
            a: int

    error = refusal(build)
    assert str(error).startswith(f"[unsupported_type] {HERE}:{line_of('the plain class')}: ")
    assert "Plain must be a dataclass: put @payload above @dataclass" in str(error)


def test_decorators_in_the_wrong_order_are_reported_at_the_class_line() -> None:
    def build() -> None:
        @dataclass
        @payload
        class Swapped:  # the swapped class
            a: int

    assert f"{HERE}:{line_of('the swapped class')}: Swapped must be a dataclass" in str(
        refusal(build)
    )


@dataclass
class _BaseWithSet:
    tags: set[str]  # the inherited annotation


@dataclass
class _PlainInner:
    ok: int
    blob: bytes  # the nested annotation


class _Floaty(enum.Enum):
    A = 1.5


def test_a_field_inherited_from_a_base_class_is_reported_in_the_base_class() -> None:
    def build() -> None:
        @payload
        @dataclass
        class Child(_BaseWithSet):
            extra: int = 0

    error = refusal(build)
    assert (error.file, error.line) == (HERE, line_of("the inherited annotation"))
    assert "Child.tags: type set[str] is not supported" in str(error)


def test_a_field_of_a_nested_dataclass_is_reported_in_the_nested_class() -> None:
    def build() -> None:
        @payload
        @dataclass
        class Outer:
            inner: _PlainInner

    error = refusal(build)
    assert (error.file, error.line) == (HERE, line_of("the nested annotation"))
    assert "_PlainInner.blob: type bytes is not supported" in str(error)


def test_other_field_problems_are_reported_at_the_field_line() -> None:
    def enum_values() -> None:
        @payload
        @dataclass
        class HasFloaty:
            f: _Floaty  # the floaty annotation

    def unresolved() -> None:
        @payload
        @dataclass
        class Late:
            other: Later  # type: ignore[name-defined]  # noqa: F821  # the late annotation

    def not_a_name() -> None:
        @payload
        @dataclass
        class Cherokee:
            Ꭰ: int  # the cherokee annotation

    for build, marker, says in [
        (enum_values, "the floaty annotation", "HasFloaty.f: enum _Floaty.A has value 1.5"),
        (unresolved, "the late annotation", "Late.other: cannot resolve type Later"),
        (not_a_name, "the cherokee annotation", "Cherokee.\u13a0: the field name cannot name"),
    ]:
        error = refusal(build)
        assert (error.file, error.line) == (HERE, line_of(marker)), says
        assert says in str(error)


def test_a_class_without_source_is_reported_where_payload_was_called() -> None:
    cls = dataclasses.make_dataclass("Built", [("when", set[int])])
    error = refusal(lambda: payload(cls))  # the payload call
    assert (error.file, error.line) == (HERE, line_of("the payload call"))
    assert "Built.when: type set[int] is not supported" in str(error)


# -- check_payload and to_xml refuse bad values ---------------------------------------------


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        (Order(id="7", tags=[], ship_to=Address("x")), "/Order/id"),  # type: ignore[arg-type]
        (Order(id=True, tags=[], ship_to=Address("x")), "/Order/id"),
        (Order(id=1, tags=["a", 2], ship_to=Address("x")), "/Order/tags"),  # type: ignore[list-item]
        (Order(id=1, tags=("a",), ship_to=Address("x")), "/Order/tags"),  # type: ignore[arg-type]
        (Order(id=1, tags=[], ship_to=Address(5)), "/Order/ship_to/city"),  # type: ignore[arg-type]
        (Order(id=1, tags=[], ship_to=None), "/Order/ship_to"),  # type: ignore[arg-type]
        (Order(id=1, tags=[], ship_to=Inner("x")), "/Order/ship_to"),  # type: ignore[arg-type]
        (Order(id=None, tags=[], ship_to=Address("x")), "/Order/id"),  # type: ignore[arg-type]
        (sample_everything(ratio=1), "/Everything/ratio"),
        (sample_everything(amount=Decimal("NaN")), "/Everything/amount"),
        (sample_everything(amount=1.5), "/Everything/amount"),
        (sample_everything(day=datetime(2024, 1, 1)), "/Everything/day"),
        (sample_everything(color="red"), "/Everything/color"),
        (sample_everything(level=Color.RED), "/Everything/level"),
        (
            sample_everything(at=datetime(2024, 1, 1, tzinfo=timezone(timedelta(seconds=30)))),
            "/Everything/at",
        ),
        (
            sample_everything(at=datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=15)))),
            "/Everything/at",
        ),
        (sample_everything(inners=[Inner("a"), Inner(3)]), "/Everything/inners/label"),  # type: ignore[arg-type]
        (sample_everything(text="bell\x07"), "/Everything/text"),
        (sample_everything(number=10**5000), "/Everything/number"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_check_payload_and_to_xml_reject_a_wrong_value_naming_the_field_path(
    obj: object, path: str
) -> None:
    with pytest.raises(SchemaViolation) as checked:
        check_payload(obj)
    assert checked.value.path == path
    assert path in str(checked.value)
    with pytest.raises(SchemaViolation) as written:
        to_xml(obj)
    assert written.value.path == path


def test_to_xml_rejects_a_nul_character_naming_the_field_and_the_character() -> None:
    with pytest.raises(SchemaViolation) as info:
        to_xml(Order(1, [], Address("Os\x00lo")))
    assert info.value.path == "/Order/ship_to/city"
    assert "U+0000" in str(info.value)


def test_check_payload_accepts_a_valid_object_and_a_non_payload_raises_type_error() -> None:
    check_payload(sample_everything())
    with pytest.raises(PayloadTypeError):
        check_payload(5)


# -- binding -------------------------------------------------------------------------------------


def test_bind_error_from_a_value_carries_line_and_path() -> None:
    doc = b"<Inner>\n  <label>x</label>\n  <day>2024-02-30</day>\n</Inner>"
    with pytest.raises(SchemaViolation) as info:
        from_xml(Inner, doc)  # the XSD rejects Feb 30 itself
    assert (info.value.line, info.value.path) == (3, "/Inner/day")
    with pytest.raises(SchemaViolation) as unbound:
        from_element(Inner, etree.fromstring(doc), validate=False)
    assert (unbound.value.line, unbound.value.path) == (3, "/Inner/day")


def test_date_the_xsd_accepts_but_python_cannot_hold_is_a_schema_violation() -> None:
    with pytest.raises(SchemaViolation) as info:
        from_xml(Inner, b"<Inner><label>x</label>\n<day>2024-01-31Z</day></Inner>")
    assert (info.value.line, info.value.path) == (2, "/Inner/day")


def test_from_element_without_validation_still_rejects_unknown_elements() -> None:
    doc = etree.fromstring(b"<Order>\n<id>1</id>\n<bogus/>\n</Order>")
    with pytest.raises(SchemaViolation, match="unknown element <bogus>") as info:
        from_element(Order, doc, validate=False)
    assert info.value.line == 3


def test_from_element_without_validation_rejects_wrong_root_repeats_and_missing() -> None:
    with pytest.raises(SchemaViolation, match="expected root element <Order>"):
        from_element(Order, etree.fromstring(b"<Other/>"), validate=False)
    with pytest.raises(SchemaViolation, match="<id> appears twice"):
        from_element(
            Order,
            etree.fromstring(b"<Order><id>1</id><id>2</id><ship_to><city/></ship_to></Order>"),
            validate=False,
        )
    with pytest.raises(SchemaViolation, match="missing element <ship_to>"):
        from_element(Order, etree.fromstring(b"<Order><id>1</id></Order>"), validate=False)


def test_from_element_without_validation_rejects_an_element_inside_a_value() -> None:
    doc = etree.fromstring(b"<Order><id>1<x/></id><ship_to><city/></ship_to></Order>")
    with pytest.raises(SchemaViolation, match="<id> holds a value, not elements"):
        from_element(Order, doc, validate=False)


def test_from_element_with_validation_rejects_what_the_xsd_rejects() -> None:
    with pytest.raises(SchemaViolation) as info:
        from_element(Order, etree.fromstring(b"<Order><id>x</id></Order>"))
    assert info.value.reason == "schema_violation"
    assert info.value.path == "/Order/id"


def test_comments_and_processing_instructions_in_payload_input_are_ignored() -> None:
    doc = (
        b"<?pi before?><Order><!-- c --><id>7</id><?pi x?><tags>a<!-- split -->b</tags>"
        b"<ship_to><city>Os<?pi y?>lo</city><!-- c --></ship_to></Order>"
    )
    expected = Order(7, ["ab"], Address("Oslo"))
    assert from_xml(Order, doc) == expected
    # a tree from plain lxml keeps them: binding still reads the text around them
    assert from_element(Order, etree.fromstring(doc)) == expected
    assert from_element(Order, etree.fromstring(doc), validate=False) == expected


def test_from_xml_rejects_hostile_input_before_binding() -> None:
    with pytest.raises(XmlInputError) as info:
        from_xml(Order, b'<!DOCTYPE Order [<!ENTITY e "x">]><Order><id>&e;</id></Order>')
    assert info.value.reason == "doctype"


def test_decimal_whose_text_would_explode_is_refused_before_writing() -> None:
    """Decimal("1E+999999999") would be written as a billion digits: refused by the check."""
    from decimal import Decimal

    @payload
    @dataclass
    class Price:
        amount: Decimal

    with pytest.raises(SchemaViolation, match="/Price/amount"):
        check_payload(Price(amount=Decimal("1E+999999999")))
    with pytest.raises(SchemaViolation):
        to_xml(Price(amount=Decimal("1E-5000")))
    assert from_xml(Price, to_xml(Price(amount=Decimal("1E+100")))) == Price(Decimal("1E+100"))
