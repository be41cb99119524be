"""The in-process check, the writer, the XSD and both binders agree, type by type.

For every supported field type (and the subclasses and look-alikes a caller may hand over):

- whatever `check_payload` accepts, `to_xml` writes, the class's XSD accepts, and `from_xml`
  reads back equal;
- whatever the XSD and `from_xml` accept, `to_xml` writes back, and it reads back equal;
- the generated binder and the general `_bind` read a valid element to the same value;
- the XSD types whose whitespace rule is ``collapse`` (all but ``xs:string``) accept the same
  value with any XML whitespace around it, and it binds to the same value.

Values are drawn at the edges of each lexical space: signs, leading zeros, exponents, ``INF``,
``-0``, many digits, years 0001 and 9999, negative years, time zones up to +-14:00, fractions of
seconds, every XML whitespace character around a value, enum values with spaces.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from lxml import etree

from xml_pipeline._errors import SchemaViolation, XmlInputError
from xml_pipeline._wire.codegen import Unusual
from xml_pipeline._wire.payloads import (
    _bind,
    check_payload,
    from_xml,
    payload,
    payload_spec,
    to_xml,
)

# -- the types -----------------------------------------------------------------------------------


class Shade(enum.Enum):
    RED = "red"
    SPACED = " a  b "
    LINES = "x\r\ny\tz"
    EMPTY = ""


class Count(enum.Enum):
    ZERO = 0
    ONE = 1
    NEG = -5
    BIG = 10**30


class Mixed(enum.Enum):
    WORD = "one"
    NUMBER = 1


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 20


class Tone(enum.StrEnum):
    SOFT = "soft"
    LOUD = "Loud tone"


class Size(str, enum.Enum):  # noqa: UP042 - the mixin spelling under test
    S = "s"
    M = "m"


class Rank(int, enum.Enum):
    FIRST = 1
    SECOND = 2


class Perm(enum.Flag):
    R = 1
    W = 2
    X = 4
    RW = 3


class Bits(enum.IntFlag):
    ONE = 1
    TWO = 2


class UserId(int):
    pass


class Name(str):
    pass


class Money(Decimal):
    def __str__(self) -> str:
        return f"${Decimal.__str__(self)}"

    def __format__(self, spec: str) -> str:
        return f"${Decimal.__format__(self, spec)}"


class Stamp(datetime):
    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return "stamp"


class Day(date):
    def isoformat(self) -> str:
        return "day"


ENUMS: list[type[enum.Enum]] = [Shade, Count, Mixed, Level, Tone, Size, Rank, Perm, Bits]
SCALARS: list[type] = [str, int, float, bool, Decimal, datetime, date, *ENUMS]


# fields without defaults may not follow one with a default: put the list first
def _make_class(tp: type) -> type:
    cls = dataclasses.make_dataclass(
        f"Of{tp.__name__.title()}",
        [
            ("v", tp),
            ("many", list[tp]),
            ("maybe", tp | None, dataclasses.field(default=None)),  # type: ignore[operator]
        ],
    )
    cls.__module__ = __name__
    return payload(cls)


CLASSES: dict[type, type] = {tp: _make_class(tp) for tp in SCALARS}


def same(a: object, b: object) -> bool:
    """Equality that takes NaN for NaN and requires the same type and time-zone offset."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, datetime) and isinstance(b, datetime) and a.utcoffset() != b.utcoffset():
        return False
    return a == b


def same_object(a: Any, b: Any) -> bool:
    return (
        type(a) is type(b)
        and same(a.v, b.v)
        and (a.maybe is None) == (b.maybe is None)
        and (a.maybe is None or same(a.maybe, b.maybe))
        and len(a.many) == len(b.many)
        and all(same(x, y) for x, y in zip(a.many, b.many, strict=True))
    )


# -- values a caller may hand over ---------------------------------------------------------------

OFFSETS = st.one_of(
    st.sampled_from([0, 14 * 60, -14 * 60, 14 * 60 + 1, -14 * 60 - 1, 330, -1]).map(
        lambda m: timezone(timedelta(minutes=m))
    ),
    st.integers(-24 * 60 + 1, 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m))),
    st.just(timezone(timedelta(seconds=30))),
)
DATETIMES = st.one_of(
    st.datetimes(),
    st.datetimes(timezones=OFFSETS),
    st.sampled_from([datetime.min, datetime.max, datetime(1, 1, 1, tzinfo=UTC)]),
)
DECIMALS = st.one_of(
    st.decimals(),  # NaN, sNaN and infinities included
    st.builds(
        lambda sign, digits, exponent: Decimal((sign, tuple(digits), exponent)),
        st.integers(0, 1),
        st.lists(st.integers(0, 9), min_size=1, max_size=40),
        st.integers(-5000, 5000),
    ),
    st.sampled_from([Decimal("-0"), Decimal("1E+4300"), Decimal("1E+4301"), Decimal("-0E-4301")]),
)
INTS = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 10**4299, -(10**4299), 10**4300, 10**5000]),
)
ANY_TEXT = st.text(max_size=8)  # surrogates and control characters included
ENUM_MEMBERS = st.one_of(
    *(st.sampled_from(list(e.__members__.values())) for e in ENUMS),
    st.sampled_from([Perm.R | Perm.X, Perm.R | Perm.W | Perm.X, Perm(0), Bits(8), Bits(3)]),
)
LOOKALIKES = st.one_of(
    st.builds(UserId, st.integers()),
    st.builds(Name, st.text(max_size=5)),
    st.builds(Money, st.decimals(allow_nan=False, allow_infinity=False)),
    st.just(Stamp(2024, 1, 31, 12)),
    st.just(Day(2024, 1, 31)),
    st.just(date(2024, 1, 31)),
    st.just(datetime(2024, 1, 31, 12)),
)
ANY_VALUE = st.one_of(
    ANY_TEXT,
    INTS,
    st.floats(),
    st.booleans(),
    DECIMALS,
    DATETIMES,
    st.dates(),
    ENUM_MEMBERS,
    LOOKALIKES,
    st.none(),
)


def values_for(tp: type) -> st.SearchStrategy[Any]:
    """Mostly values of the right type, the rest anything."""
    right: dict[type, st.SearchStrategy[Any]] = {
        str: ANY_TEXT,
        int: INTS,
        float: st.floats(),
        bool: st.booleans(),
        Decimal: DECIMALS,
        datetime: DATETIMES,
        date: st.dates(),
    }
    own = right.get(tp, ENUM_MEMBERS)
    return st.one_of(own, own, ANY_VALUE)


@st.composite
def objects(draw: st.DrawFn) -> Any:
    tp = draw(st.sampled_from(SCALARS))
    values = values_for(tp)
    cls = CLASSES[tp]
    return cls(
        v=draw(values),
        many=draw(st.lists(values, max_size=2)),
        maybe=draw(st.none() | values),
    )


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(objects())
def test_whatever_check_payload_accepts_is_written_valid_and_reads_back_equal(obj: Any) -> None:
    try:
        check_payload(obj)
    except SchemaViolation:
        event("refused")
        with pytest.raises(SchemaViolation):
            to_xml(obj)  # to_xml checks as check_payload does
        return
    event("accepted")
    data = to_xml(obj)
    schema = payload_spec(obj).schema
    assert schema.validate(etree.fromstring(data)), (data[:200], schema.error_log.last_error)
    back = from_xml(type(obj), data, limits=None)
    assert same_object(back, obj), (obj, back)
    assert to_xml(back) == data


# -- text a peer may send ------------------------------------------------------------------------

# every XML whitespace character, written raw and as a character reference (a raw \r is read as
# \n by any XML parser: only the reference carries a carriage return)
WHITESPACE = st.lists(
    st.sampled_from([" ", "\t", "\n", "&#13;", "&#9;", "&#x20;", "&#10;"]), max_size=4
).map("".join)
SIGN = st.sampled_from(["", "", "+", "-"])
DIGITS = st.one_of(
    st.from_regex(r"[0-9]{1,25}", fullmatch=True),
    st.sampled_from(["0", "00", "007", "9" * 4300, "1" + "0" * 4300, "0" * 4400 + "1"]),
)


INTEGER_TEXT = st.builds("{}{}".format, SIGN, DIGITS)
DOUBLE_TEXT = st.one_of(
    st.builds(
        "{}{}{}".format,
        SIGN,
        st.sampled_from(["1", "1.", ".5", "1.5", "00.50", "0", "123456789012345678901234567890"]),
        st.sampled_from(["", "e5", "E+5", "e-5", "E0", "e400", "e-400", "e308", "e-324", "E+"]),
    ),
    st.sampled_from(["INF", "-INF", "+INF", "NaN", "-NaN", "inf", "nan", "Infinity", "1_0"]),
    st.floats().map(repr),
)
DECIMAL_TEXT = st.one_of(
    st.builds(
        "{}{}{}".format,
        SIGN,
        DIGITS,
        st.sampled_from(["", ".", ".0", ".5", ".000", "." + "1" * 4400]),
    ),
    st.builds("{}.{}".format, SIGN, DIGITS),
    st.sampled_from(["1e3", "1_0", "NaN", "Infinity", "."]),
)
BOOLEAN_TEXT = st.sampled_from(["true", "false", "1", "0", "TRUE", "True", "yes", "01", ""])
YEARS = st.sampled_from(["0001", "9999", "2024", "-0001", "10000", "0000", "0999", "999", "-2024"])
MONTH_DAYS = st.sampled_from(["01-01", "12-31", "02-29", "02-30", "13-01", "1-01"])
ZONES = st.sampled_from(
    ["", "", "Z", "+14:00", "-14:00", "+00:00", "-00:00", "+05:30", "+14:01", "-14:59", "+24:00"]
)
DATE_TEXT = st.builds("{}-{}{}".format, YEARS, MONTH_DAYS, ZONES)
TIMES = st.builds(
    "{}:{}:{}{}".format,
    st.sampled_from(["00", "23", "24", "12", "7"]),
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["00", "59", "60", "5"]),
    st.sampled_from(["", ".5", ".000001", ".1234567", ".123456789012", "."]),
)
DATETIME_TEXT = st.builds("{}-{}T{}{}".format, YEARS, MONTH_DAYS, TIMES, ZONES)


def enum_text(cls: type[enum.Enum]) -> st.SearchStrategy[str]:
    texts = [str(m.value) for m in cls.__members__.values()]
    return st.one_of(
        st.sampled_from(texts),
        st.sampled_from(texts).map(lambda t: f"+{t}" if t[:1].isdigit() else t.upper()),
        st.sampled_from(["3", "0", "7", "01", " 1", "", "x"]),
    )


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("\r", "&#13;")


LEXICAL: dict[type, st.SearchStrategy[str]] = {
    str: st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=8).map(
        _escape
    ),
    int: INTEGER_TEXT,
    float: DOUBLE_TEXT,
    bool: BOOLEAN_TEXT,
    Decimal: DECIMAL_TEXT,
    datetime: DATETIME_TEXT,
    date: DATE_TEXT,
    **{e: enum_text(e).map(_escape) for e in ENUMS},
}


def document(cls: type, v: str, many: list[str]) -> bytes:
    tag = payload_spec(cls).tag
    items = "".join(f"<many>{t}</many>" for t in many)
    return f"<{tag}><v>{v}</v>{items}</{tag}>".encode()


@st.composite
def documents(draw: st.DrawFn) -> tuple[type, bytes]:
    tp = draw(st.sampled_from(SCALARS))
    texts = LEXICAL[tp]
    padded = st.builds("{}{}{}".format, WHITESPACE, texts, WHITESPACE)
    values = st.one_of(texts, padded)
    return CLASSES[tp], document(CLASSES[tp], draw(values), draw(st.lists(values, max_size=2)))


def _bound(cls: type, element: etree._Element) -> object:
    """What the general binder reads from ``element``, or the type of what it raises."""
    try:
        return _bind(payload_spec(cls), element, "/" + payload_spec(cls).tag)
    except SchemaViolation as exc:
        return type(exc)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_whatever_the_xsd_and_from_xml_accept_to_xml_writes_back_and_it_reads_back_equal(
    case: tuple[type, bytes],
) -> None:
    cls, data = case
    spec = payload_spec(cls)
    element = etree.fromstring(data)
    valid = spec.schema.validate(element)
    general = _bound(cls, element)
    try:
        fast: object = spec._fast_bind(element)
    except (Unusual, ValueError, ArithmeticError, LookupError):
        fast = None  # the fast binder hands this shape to the general one
    try:
        obj = from_xml(cls, data)
    except SchemaViolation:
        event("refused")
        assert not valid or general is SchemaViolation, (data[:200], general)
        return
    event("accepted")
    assert valid
    assert same_object(obj, general), "from_element and _bind disagree"
    if fast is not None:
        assert same_object(fast, general), "the fast binder and _bind disagree"
    written = to_xml(obj)  # a SchemaViolation here: read what it cannot write
    assert same_object(from_xml(cls, written), obj)


# -- whitespace around a value -------------------------------------------------------------------

COLLAPSED = [int, float, bool, Decimal, datetime, date, Count, Level, Rank, Perm, Bits]
PRESERVED = [str, Shade, Tone, Size, Mixed]


def _valid_texts(tp: type) -> st.SearchStrategy[str]:
    return LEXICAL[tp].filter(lambda t: from_xml_or_none(CLASSES[tp], t) is not None)


def from_xml_or_none(cls: type, text: str) -> object:
    """The object ``text`` reads as, or None when it is not a valid value (or, written raw
    into a document, not well-formed XML: ``]]>``, ``<``...)."""
    try:
        return from_xml(cls, document(cls, text, []))
    except (SchemaViolation, XmlInputError):
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_types_whose_xsd_collapses_whitespace_accept_any_whitespace_around_a_value(
    data: st.DataObject,
) -> None:
    tp = data.draw(st.sampled_from(COLLAPSED))
    cls = CLASSES[tp]
    text = data.draw(_valid_texts(tp))
    before, after = data.draw(WHITESPACE), data.draw(WHITESPACE)
    plain = from_xml(cls, document(cls, text, []))
    padded = from_xml(cls, document(cls, before + text + after, [before + text + after]))
    assert same_object(padded, type(padded)(v=plain.v, many=[plain.v]))  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_types_whose_xsd_preserves_whitespace_keep_it_as_part_of_the_value(
    data: st.DataObject,
) -> None:
    tp = data.draw(st.sampled_from(PRESERVED))
    cls = CLASSES[tp]
    text = data.draw(_valid_texts(tp))
    padded = f" {text}\t"
    read = from_xml_or_none(cls, padded)
    if tp is str:
        assert read is not None and read.v == " " + from_xml(cls, document(cls, text, [])).v + "\t"  # type: ignore[attr-defined]
    else:  # only a value written exactly as the enum's text is a member
        assert read is None or str(read.v.value) == padded  # type: ignore[attr-defined]


@pytest.mark.parametrize("tp", COLLAPSED)
@pytest.mark.parametrize("pad", [" ", "\t", "\n", "&#13;", " \n\t&#13; "])
def test_each_collapsing_type_accepts_whitespace_on_either_side(tp: type, pad: str) -> None:
    cls = CLASSES[tp]
    samples = {
        int: ["12", "-0", "+7"],
        float: ["1.5", "INF", "-INF", "NaN", "1e3"],
        bool: ["true", "0"],
        Decimal: ["2.50", "-.5"],
        datetime: ["2024-01-31T12:00:00", "2024-01-31T12:00:00Z", "0001-01-01T00:00:00-14:00"],
        date: ["2024-01-31", "9999-12-31"],
    }.get(tp) or [str(m.value) for m in tp]  # type: ignore[attr-defined]
    for sample in samples:
        plain = from_xml(cls, document(cls, sample, []))
        for text in (pad + sample, sample + pad, pad + sample + pad):
            assert same(from_xml(cls, document(cls, text, [])).v, plain.v), text  # type: ignore[attr-defined]


EDGE_VALUES = [
    (Decimal, Money("1.5")),
    (Decimal, Decimal("1E+4300")),
    (Decimal, Decimal("1E+4299")),
    (Decimal, Decimal("-0E-4300")),
    (Decimal, Decimal((0, (9,) * 4300, -4300))),
    (int, int("9" * 4300)),
    (int, 10**4300),
    (int, UserId(3)),
    (int, Level.LOW),
    (int, True),
    (str, Name("x")),
    (str, Tone.SOFT),
    (str, Size.S),
    (float, 1),
    (float, -0.0),
    (float, 5e-324),
    (datetime, Stamp(2024, 1, 31)),
    (datetime, datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))),
    (datetime, datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(-timedelta(hours=14)))),
    (datetime, datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=14, minutes=1)))),
    (date, Day(2024, 1, 31)),
    (date, datetime(2024, 1, 31)),
    (Perm, Perm.RW),
    (Perm, Perm.R | Perm.X),
    (Perm, Perm(0)),
    (Bits, Bits(8)),
    (Bits, Bits.ONE | Bits.TWO),
    (Level, 1),
    (Shade, Shade.LINES),
    (Count, Count.BIG),
]


def _id(value: object) -> str:
    if type(value) is int and value.bit_length() > 1000:
        return f"int of {value.bit_length()} bits"
    return repr(value)[:40]


@pytest.mark.parametrize(("tp", "value"), EDGE_VALUES, ids=_id)
def test_an_edge_value_is_refused_by_the_check_or_written_valid_and_read_back_equal(
    tp: type, value: object
) -> None:
    obj = CLASSES[tp](v=value, many=[value])
    try:
        check_payload(obj)
    except SchemaViolation:
        with pytest.raises(SchemaViolation):
            to_xml(obj)
        return
    data = to_xml(obj)
    assert payload_spec(obj).schema.validate(etree.fromstring(data)), data[:200]
    assert same_object(from_xml(type(obj), data), obj)
