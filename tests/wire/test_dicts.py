"""to_dict and from_dict: payloads as JSON, read back equal, and checked as XML is checked.

- whatever `check_payload` accepts, `to_dict` writes as JSON-ready values (``json.dumps``
  takes them, strict JSON: no NaN tokens), `from_dict` reads them back equal, and equal to
  what XML reads back (`from_xml(to_xml(x))`); whatever it refuses, `to_dict` refuses;
- text in an XSD lexical form reads alike as a JSON string and as XML element text;
- the parse limits refuse a JSON object exactly where they refuse the same document as XML;
- bad input is refused naming the field path and what to send instead.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import types
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from tests.wire import test_codecs
from tests.wire.test_codecs import (
    CLASSES,
    LEXICAL,
    SCALARS,
    document,
    objects,
    same,
    same_object,
)
from tests.wire.test_payloads import (
    BIG_INTS,
    DATETIMES,
    DECIMALS,
    EVERYTHING,
    XML_TEXT,
    Address,
    Color,
    Everything,
    Level,
    Order,
    sample_everything,
)
from xml_pipeline import (
    ParseLimits,
    PayloadTypeError,
    SchemaViolation,
    XmlInputError,
    check_payload,
    from_dict,
    from_xml,
    payload,
    to_dict,
    to_xml,
)

JSON_TYPES = (dict, list, str, int, float, bool, type(None))


def json_trip(data: dict[str, Any]) -> Any:
    """``data`` through strict JSON text and back (NaN and Infinity tokens refused)."""
    return json.loads(json.dumps(data, allow_nan=False))


def only_json(value: object) -> bool:
    """Whether ``value`` holds JSON types only (dicts with string keys)."""
    if type(value) is dict:
        return all(type(k) is str and only_json(v) for k, v in value.items())
    if type(value) is list:
        return all(only_json(v) for v in value)
    return type(value) in JSON_TYPES


# -- round trips ---------------------------------------------------------------------------------


def typed_values(tp: Any) -> st.SearchStrategy[Any]:
    """Values of the field's own type, at the edges of what it holds (test_codecs' objects()
    mixes in values of every other type, so most of its objects are refused)."""
    own: dict[Any, st.SearchStrategy[Any]] = {
        str: test_codecs.ANY_TEXT,
        int: test_codecs.INTS,
        float: st.floats(),
        bool: st.booleans(),
        Decimal: test_codecs.DECIMALS,
        datetime: test_codecs.DATETIMES,
        date: st.dates(),
    }
    return own[tp] if tp in own else st.sampled_from(list(tp.__members__.values()))


@st.composite
def typed_objects(draw: st.DrawFn) -> Any:
    tp = draw(st.sampled_from(SCALARS))
    values = typed_values(tp)
    return CLASSES[tp](
        v=draw(values), many=draw(st.lists(values, max_size=2)), maybe=draw(st.none() | values)
    )


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(objects(), typed_objects()))
def test_what_check_payload_accepts_travels_as_json_and_reads_back_as_xml_reads_it(
    obj: Any,
) -> None:
    try:
        check_payload(obj)
    except SchemaViolation:
        event("refused")
        with pytest.raises(SchemaViolation, match=r"\(at Of\w+\.(v|many\[\d\]|maybe)\)"):
            to_dict(obj)
        return
    event("accepted")
    data = to_dict(obj)
    assert only_json(data), data
    back = from_dict(type(obj), json_trip(data))
    assert same_object(back, obj), (obj, back)
    assert same_object(back, from_xml(type(obj), to_xml(obj)))
    assert to_dict(back) == data


@settings(max_examples=200, deadline=None)
@given(EVERYTHING)
def test_every_kind_of_field_reads_back_equal_and_agrees_with_xml(obj: Everything) -> None:
    data = to_dict(obj)
    assert only_json(data)
    back = from_dict(Everything, json_trip(data))
    assert back == obj == from_xml(Everything, to_xml(obj))
    assert to_dict(back) == data  # time zones and decimal digits kept exactly


def test_order_is_written_as_exactly_the_documented_dict() -> None:
    order = Order(id=7, tags=["a", "b"], ship_to=Address(city="Oslo"))
    assert to_dict(order) == {
        "id": 7,
        "tags": ["a", "b"],
        "ship_to": {"city": "Oslo"},
        "note": None,
    }


def test_scalars_without_a_json_type_are_written_in_their_xsd_lexical_form() -> None:
    obj = sample_everything(
        ratio=float("-inf"),
        amount=Decimal("1E+3"),
        at=datetime(2024, 1, 31, 12, 0, 0, 5, tzinfo=UTC),
        color=Color.ODD,
        level=Level.HIGH,
        amounts=[Decimal("-0.50")],
    )
    data = to_dict(obj)
    assert data["ratio"] == "-INF"
    assert data["amount"] == "1000"
    assert data["amounts"] == ["-0.50"]
    assert data["at"] == "2024-01-31T12:00:00.000005+00:00"
    assert data["day"] == "2024-01-31"
    assert data["color"] == Color.ODD.value
    assert data["level"] == 20  # an enum of ints is an integer, as xs:integer
    for key in ("amount", "at", "day"):  # the very text the XML holds
        assert f"<{key}>{data[key]}</{key}>".encode() in to_xml(obj)
    nan = to_dict(sample_everything(ratio=float("nan")))["ratio"]
    assert nan == "NaN"


# -- the lexical forms agree with XML's ----------------------------------------------------------


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_a_string_in_an_xsd_form_reads_as_the_same_text_in_xml_does(data: st.DataObject) -> None:
    tp = data.draw(st.sampled_from([Decimal, datetime, date]))
    text = data.draw(LEXICAL[tp])
    cls = CLASSES[tp]
    try:
        by_xml: object = from_xml(cls, document(cls, text, [])).v  # type: ignore[attr-defined]
    except SchemaViolation:
        by_xml = SchemaViolation
    try:
        by_json: object = from_dict(cls, {"v": text}).v  # type: ignore[attr-defined]
    except SchemaViolation:
        by_json = SchemaViolation
    event("refused" if by_json is SchemaViolation else "accepted")
    assert same(by_json, by_xml), (text[:80], by_json, by_xml)


@pytest.mark.parametrize(
    ("tp", "value", "expected"),
    [
        (float, "INF", float("inf")),
        (float, "-INF", float("-inf")),
        (float, 12, 12.0),
        (float, 10**400, float("inf")),  # as xs:double reads 400 digits: the nearest double
        (Decimal, 12, Decimal(12)),
        (Decimal, "+.50", Decimal("0.50")),
        (Decimal, "007", Decimal(7)),
        (datetime, "2024-01-31T24:00:00Z", datetime(2024, 2, 1, tzinfo=UTC)),
        (date, "0001-01-01", date(1, 1, 1)),
    ],
)
def test_json_values_read_as_the_same_text_reads_in_xml(
    tp: type, value: object, expected: object
) -> None:
    cls = CLASSES[tp]
    got = from_dict(cls, {"v": value, "many": [value]})
    assert same(got.v, expected) and same(got.many[0], expected)  # type: ignore[attr-defined]
    assert same(from_xml(cls, document(cls, str(value), [])).v, expected)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "tp", [e for e in CLASSES if isinstance(e, type) and issubclass(e, enum.Enum)]
)
def test_every_enum_member_travels_as_its_value_and_nothing_else_is_a_member(tp: Any) -> None:
    cls = CLASSES[tp]
    integral = all(type(m.value) is int for m in tp)
    for member in dict.fromkeys(tp.__members__.values()):
        data = to_dict(cls(v=member, many=[member]))
        assert data["v"] == data["many"][0] == (member.value if integral else str(member.value))
        assert from_dict(cls, json_trip(data)).v is member
    with pytest.raises(SchemaViolation, match=r"expected one of .* \(at Of\w+\.v\)"):
        from_dict(cls, {"v": 3.5})
    with pytest.raises(SchemaViolation, match=r"is not a \w+: expected one of"):
        from_dict(cls, {"v": 987654321 if integral else "no such value"})


def test_an_enum_of_ints_is_read_from_an_integer_and_one_of_text_from_exact_text() -> None:
    @payload
    @dataclass
    class Paint:
        color: Color
        level: Level

    assert from_dict(Paint, {"color": "red", "level": 20}) == Paint(Color.RED, Level.HIGH)
    for bad, path in (
        ({"color": "RED", "level": 1}, "color"),
        ({"color": "red", "level": "1"}, "level"),
    ):
        with pytest.raises(SchemaViolation, match=rf"\(at Paint\.{path}\)"):
            from_dict(Paint, bad)
    with pytest.raises(SchemaViolation, match=r"expected one of \[1, 20\], got the boolean true"):
        from_dict(Paint, {"color": "red", "level": True})


# -- absent keys read as absent elements ---------------------------------------------------------


@payload
@dataclass
class Defaults:
    name: str
    count: int = 3
    note: str | None = "kept only when sent"
    tags: list[str] = field(default_factory=lambda: ["x"])


def test_a_missing_key_reads_as_a_missing_element_does() -> None:
    by_json = from_dict(Defaults, {"name": "a"})
    assert by_json == from_xml(Defaults, b"<Defaults><name>a</name></Defaults>")
    assert by_json == Defaults(name="a", count=3, note=None, tags=[])
    assert from_dict(Defaults, {"name": "a", "note": None}).note is None
    with pytest.raises(SchemaViolation, match=r"missing key 'name': the field is required"):
        from_dict(Defaults, {})


def test_null_is_refused_where_the_field_is_not_optional_saying_what_to_send() -> None:
    with pytest.raises(SchemaViolation, match=r"got null; omit the key to take its default"):
        from_dict(Defaults, {"name": "a", "count": None})
    with pytest.raises(SchemaViolation, match=r"got null \(at Defaults\.name\)"):
        from_dict(Defaults, {"name": None})
    with pytest.raises(
        SchemaViolation, match=r"got null; send \[\] for none \(at Defaults\.tags\)"
    ):
        from_dict(Defaults, {"name": "a", "tags": None})
    with pytest.raises(SchemaViolation, match=r"got null \(at Defaults\.tags\[1\]\)"):
        from_dict(Defaults, {"name": "a", "tags": ["x", None]})


# -- bad input ----------------------------------------------------------------------------------


def everything_data(**changes: Any) -> dict[str, Any]:
    return {**to_dict(sample_everything()), **changes}


def test_an_unknown_key_is_refused_naming_it_the_valid_keys_and_the_closest() -> None:
    with pytest.raises(SchemaViolation) as caught:
        from_dict(Order, {"id": 1, "tgas": [], "ship_to": {"city": "x"}})
    assert caught.value.message == (
        "unknown key 'tgas'; Order has the keys id, tags, ship_to, note; did you mean 'tags'? "
        "(at Order)"
    )
    with pytest.raises(SchemaViolation, match=r"unknown key 'zip'; Address has the keys city"):
        from_dict(Order, {"id": 1, "ship_to": {"city": "x", "zip": "0150"}})
    with pytest.raises(SchemaViolation, match=r"\(at Order.ship_to\)"):
        from_dict(Order, {"id": 1, "ship_to": {"city": "x", "zip": "0150"}})
    with pytest.raises(SchemaViolation, match=r"key 1 is not a string"):
        from_dict(Order, {"id": 1, 1: "x", "ship_to": {"city": "x"}})


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"number": True}, "Everything.number", "expected an integer .*, got the boolean true"),
        ({"number": "12"}, "Everything.number", "got the string '12'; send it without quotes"),
        ({"number": 12.0}, "Everything.number", "got the number 12.0; send 12, without a fraction"),
        ({"ratio": "1.5"}, "Everything.ratio", r'expected a number \(or "INF"'),
        ({"flag": 1}, "Everything.flag", "expected true or false, got the integer 1"),
        ({"flag": "true"}, "Everything.flag", "expected true or false, got the string 'true'"),
        (
            {"amount": 9.99},
            "Everything.amount",
            "a float cannot hold every decimal exactly; send it as a string, '9.99'",
        ),
        ({"amount": "1e3"}, "Everything.amount", r"'1e3' is not in xs:decimal form"),
        ({"amount": " 1.5"}, "Everything.amount", r"' 1.5' is not in xs:decimal form"),
        ({"amount": "NaN"}, "Everything.amount", r"'NaN' is not in xs:decimal form"),
        ({"amount": "\u0661"}, "Everything.amount", "not in xs:decimal form"),  # Arabic-Indic 1
        ({"day": "2024-02-30"}, "Everything.day", "'2024-02-30' is not a valid date"),
        ({"day": "20240131"}, "Everything.day", "is not in xs:date form"),
        ({"day": "2024-01-31Z"}, "Everything.day", "a date with a time zone cannot be held"),
        ({"day": "10000-01-01"}, "Everything.day", "holds the years 0001 to 9999 only"),
        ({"at": "2024-01-31 12:00:00"}, "Everything.at", "is not in xs:dateTime form"),
        ({"at": "2024-01-31T12:00"}, "Everything.at", "is not in xs:dateTime form"),
        ({"at": "2024-01-31T12:00:00+14:30"}, "Everything.at", "is not in xs:dateTime form"),
        ({"at": datetime(2024, 1, 31)}, "Everything.at", "got a datetime object"),
        ({"color": "RED"}, "Everything.color", r"'RED' is not a Color: expected one of"),
        ({"text": "a\x00b"}, "Everything.text", "U\\+0000, a character XML 1.0 cannot carry"),
        ({"text": 5}, "Everything.text", "expected a string, got the integer 5"),
        ({"texts": "abc"}, "Everything.texts", "expected an array, each item a string"),
        ({"numbers": [1, 2, "3"]}, r"Everything.numbers\[2\]", "got the string '3'"),
        ({"inner": "x"}, "Everything.inner", r"expected an object \(Inner\), got the string"),
        ({"inner": {"label": 1}}, "Everything.inner.label", "expected a string"),
        (
            {"inners": [{"label": "a"}, {"label": "b", "day": "x"}]},
            r"Everything.inners\[1\].day",
            "form",
        ),
        (
            {"maybe_inner": []},
            "Everything.maybe_inner",
            r"expected an object \(Inner\), got an array",
        ),
    ],
)
def test_a_wrong_value_is_refused_with_its_field_path_and_what_to_send(
    changes: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(SchemaViolation, match=rf"{words}.* \(at {path}\)$") as caught:
        from_dict(Everything, everything_data(**changes))
    assert caught.value.reason == "schema_violation"


def test_what_is_not_an_object_or_not_a_payload_class_is_refused() -> None:
    with pytest.raises(SchemaViolation, match=r"expected an object \(Order\), got an array"):
        from_dict(Order, [])  # type: ignore[arg-type]
    assert from_dict(Order, types.MappingProxyType({"id": 1, "ship_to": {"city": "x"}})).id == 1
    with pytest.raises(PayloadTypeError, match="is not a payload class"):
        from_dict(dict, {})
    with pytest.raises(PayloadTypeError, match="takes the payload class, got an instance of Order"):
        from_dict(Order(1, [], Address("x")), {})  # type: ignore[arg-type]
    with pytest.raises(PayloadTypeError, match="takes a payload object, got the class Order"):
        to_dict(Order)
    with pytest.raises(PayloadTypeError, match="is not a payload class"):
        to_dict({"id": 1})


def test_to_dict_refuses_what_to_xml_refuses_with_the_field_path() -> None:
    cases = [
        (
            Order(id="7", tags=[], ship_to=Address("x")),
            r"'7' is not a valid integer value \(at Order\.id\)",
        ),  # type: ignore[arg-type]
        (Order(id=7, tags=["a", 2], ship_to=Address("x")), r"\(at Order\.tags\[1\]\)"),  # type: ignore[list-item]
        (Order(id=7, tags=("a",), ship_to=Address("x")), r"expected a list, got tuple"),  # type: ignore[arg-type]
        (
            Order(id=7, tags=[], ship_to={"city": "x"}),
            r"expected Address, got dict \(at Order\.ship_to\)",
        ),  # type: ignore[arg-type]
        (Order(id=7, tags=[], ship_to=Address("\x01")), r"\(at Order\.ship_to\.city\)"),
    ]
    for obj, words in cases:
        with pytest.raises(SchemaViolation, match=words):
            to_dict(obj)
        with pytest.raises(SchemaViolation):
            to_xml(obj)


def test_an_integer_python_cannot_write_as_text_is_refused_not_crashed_on() -> None:
    huge = 10**5000
    for key in ("number", "amount", "ratio"):
        with pytest.raises(SchemaViolation, match="int of 16,610 bits has more digits"):
            from_dict(Everything, everything_data(**{key: huge}))


# -- the parse limits ----------------------------------------------------------------------------


@dataclass
class Leaf:
    n: int


@dataclass
class Branch:
    leaf: Leaf


@payload
@dataclass
class Tree:
    branch: Branch
    numbers: list[int] = field(default_factory=list)


def test_nesting_past_the_depth_limit_is_refused_as_xml_is() -> None:
    tree = Tree(Branch(Leaf(1)))  # Tree/branch/leaf/n: four levels of elements
    limits = ParseLimits(max_depth=3)
    with pytest.raises(XmlInputError) as by_json:
        from_dict(Tree, to_dict(tree), limits=limits)
    with pytest.raises(XmlInputError) as by_xml:
        from_xml(Tree, to_xml(tree), limits=limits)
    assert by_json.value.reason == by_xml.value.reason == "too_deep"
    assert by_json.value.path == "Tree.branch.leaf.n"
    assert "deeper than 3 levels" in by_json.value.message
    assert from_dict(Tree, to_dict(tree), limits=ParseLimits(max_depth=4)) == tree


def test_too_many_values_are_refused_as_xml_is() -> None:
    tree = Tree(Branch(Leaf(1)), numbers=list(range(20)))  # 4 elements + 20 numbers
    limits = ParseLimits(max_elements=23)
    with pytest.raises(XmlInputError) as by_json:
        from_dict(Tree, to_dict(tree), limits=limits)
    with pytest.raises(XmlInputError) as by_xml:
        from_xml(Tree, to_xml(tree), limits=limits)
    assert by_json.value.reason == by_xml.value.reason == "too_many_elements"
    assert by_json.value.path == "Tree.numbers[19]"
    assert from_dict(Tree, to_dict(tree), limits=ParseLimits(max_elements=24)) == tree


def test_a_huge_list_is_refused_at_the_cap_before_its_end_is_read() -> None:
    numbers: list[Any] = [*range(1_000_000), "never read"]
    with pytest.raises(XmlInputError, match="more than 10,000 elements") as caught:
        from_dict(Tree, {"branch": {"leaf": {"n": 1}}, "numbers": numbers})
    assert caught.value.path == "Tree.numbers[9996]"


# generated classes of any shape: scalars, optionals, lists, nested classes up to four deep

SCALAR_VALUES: dict[Any, st.SearchStrategy[Any]] = {
    str: XML_TEXT,
    int: BIG_INTS,
    float: st.floats(allow_nan=False),
    bool: st.booleans(),
    Decimal: DECIMALS,
    datetime: DATETIMES,
    date: st.dates(),
    Color: st.sampled_from(Color),
    Level: st.sampled_from(Level),
}
_names = itertools.count()


@st.composite
def shapes(draw: st.DrawFn, depth: int = 1) -> tuple[type, st.SearchStrategy[Any]]:
    """A dataclass of random fields, and a strategy for its valid instances."""
    fields: list[tuple[str, Any]] = []
    values: dict[str, st.SearchStrategy[Any]] = {}
    for i in range(draw(st.integers(1 if depth == 1 else 0, 4))):
        if depth < 4 and draw(st.integers(0, 3)) == 0:
            inner, value = draw(shapes(depth + 1))
        else:
            inner = draw(st.sampled_from(list(SCALAR_VALUES)))
            value = SCALAR_VALUES[inner]
        wrap = draw(st.sampled_from(["plain", "optional", "list"]))
        if wrap == "optional":
            inner, value = inner | None, st.none() | value
        elif wrap == "list":
            inner, value = list[inner], st.lists(value, max_size=3)  # type: ignore[valid-type]
        fields.append((f"f{i}", inner))
        values[f"f{i}"] = value
    cls = dataclasses.make_dataclass(f"Shape{next(_names)}", fields)
    cls.__module__ = __name__
    return cls, st.builds(cls, **values)


@st.composite
def shaped_objects(draw: st.DrawFn) -> Any:
    cls, values = draw(shapes())
    payload(cls)
    return draw(values)


def _outcome(read: Any) -> object:
    try:
        return read()
    except SchemaViolation:
        raise
    except XmlInputError as exc:
        return exc.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shaped_objects(), st.integers(1, 6), st.integers(1, 30))
def test_generated_shapes_read_back_equal_and_hit_the_limits_where_xml_does(
    obj: Any, max_depth: int, max_elements: int
) -> None:
    cls = type(obj)
    data = to_dict(obj)
    assert only_json(data)
    back = from_dict(cls, json_trip(data))
    assert back == from_xml(cls, to_xml(obj)) == obj
    assert to_dict(back) == data

    limits = ParseLimits(max_bytes=10**9, max_depth=max_depth, max_elements=max_elements)
    root = etree.fromstring(to_xml(obj))
    elements = sum(1 for _ in root.iter())
    depth = max(len(list(e.iterancestors())) + 1 for e in root.iter())
    by_json = _outcome(lambda: from_dict(cls, data, limits=limits))
    by_xml = _outcome(lambda: from_xml(cls, to_xml(obj), limits=limits))
    over = {"too_deep": depth > max_depth, "too_many_elements": elements > max_elements}
    event(",".join(k for k, v in over.items() if v) or "within")
    if not any(over.values()):
        assert by_json == obj and by_xml == obj
    elif all(over.values()):
        assert by_json in over and by_xml in over  # which is found first may differ
    else:
        assert by_json == by_xml == next(k for k, v in over.items() if v)
