"""Scalar codecs: how one Python value type is written as element text, read back and checked.

Each codec names the XSD type that accepts exactly the text it writes; `accepts` is the
in-process check (strict types: ``True`` is not an ``int``, ``1`` is not a ``float``, an
``IntEnum`` member is not an ``int``, a ``Decimal`` subclass is not a ``Decimal``) so that a
value that passes it always writes text its XSD type accepts, and reads back as an equal value
of the same type. The other way round, `load` reads every text the XSD type accepts (whitespace
around it included, where the XSD type collapses whitespace) to a value `accepts` takes, or
raises ValueError saying why Python cannot hold it (a year 10000, a date with a time zone...).

Names are checked here too: `xml_name_problem` says why a string cannot name a payload element.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from lxml import etree

from xml_pipeline._errors import PayloadTypeError, SchemaViolation

__all__ = [
    "CODECS",
    "XML_WHITESPACE",
    "Codec",
    "enum_codec",
    "escape_markup",
    "escape_text",
    "invalid_xml_char",
    "xml_name_problem",
    "xml_safe",
]

XML_WHITESPACE = " \t\n\r"  # what XML calls whitespace; str.strip() strips far more

# Characters XML 1.0 cannot carry, even escaped.
_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def invalid_xml_char(text: str) -> str | None:
    """The first character of ``text`` that XML 1.0 cannot carry, or ``None``."""
    if text.isprintable():
        return None  # the fast path: every printable character is an XML character
    m = _INVALID.search(text)
    return m.group() if m else None


_NCNAME_XSD = b"""<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
<xs:element name="n" type="xs:NCName"/></xs:schema>"""
_ncname: list[etree.XMLSchema] = []  # compiled on first use, then reused under the lock
_ncname_lock = threading.Lock()  # an lxml validator is not for two threads at once


@functools.lru_cache(maxsize=4096)
def xml_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a payload element (its root or a field), or ``None`` if it can.

    A name must be an XML name without a colon (payloads have no namespaces), must not start
    with ``xml`` in any case (reserved by XML), and must be one libxml2 accepts in an XSD as
    well as in a document. Its XSD checker still uses the XML 1.0 4th edition tables (letters
    and digits of Unicode 2.0): ``Café`` or ``prénom`` pass, a Cherokee or an astral letter
    does not, although Python and the XML parser take them.
    """
    if not name:
        return "an element name cannot be empty"
    if ":" in name:
        return "a colon in an element name makes it a namespace prefix; payloads have none"
    if name[:3].lower() == "xml":
        return "names starting with 'xml' (in any case) are reserved by XML"
    bad = invalid_xml_char(name)
    if bad is not None:
        return f"U+{ord(bad):04X} is not a character XML can carry"
    element = etree.Element("n")
    element.text = name
    with _ncname_lock:
        if not _ncname:
            _ncname.append(etree.XMLSchema(etree.fromstring(_NCNAME_XSD)))
        valid = _ncname[0].validate(element)
    if valid:
        return None
    return (
        "not an XML name libxml2's XSD checker accepts: letters, digits, '_', '-' and '.', "
        "starting with a letter or '_', where letters and digits are those of Unicode 2.0 "
        "(XML 1.0 4th edition)"
    )


def xml_safe(text: str, limit: int = 2000) -> str:
    """``text`` with characters XML cannot carry replaced by U+FFFD, cut to ``limit``.

    For text the library writes itself (error messages), where refusing is no option.
    """
    text = _INVALID.sub("\ufffd", text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def escape_text(text: str, path: str = "") -> str:
    """Escape ``text`` for element content; ``\\r`` is kept as ``&#13;`` so it survives parsing.

    Raises:
        SchemaViolation: ``text`` holds a character XML 1.0 cannot carry.
    """
    bad = invalid_xml_char(text)
    if bad is not None:
        raise SchemaViolation(
            f"text holds U+{ord(bad):04X}, a character XML 1.0 cannot carry", path=path or None
        )
    return escape_markup(text)


def escape_markup(text: str) -> str:
    """Escape ``&``, ``<``, ``>`` and ``\\r`` in text already known to hold only XML characters."""
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "\r" in text:
        text = text.replace("\r", "&#13;")
    return text


@dataclass(frozen=True, slots=True)
class Codec:
    """One scalar type: its XSD type, writer, reader and in-process check."""

    name: str
    xsd_type: str
    dump: Callable[[Any], str]
    load: Callable[[str], Any]
    accepts: Callable[[Any], bool]
    example: str
    enumeration: tuple[str, ...] = ()
    # `load` for text exactly as `dump` writes it, where that can be faster; on other text it
    # may raise ValueError or LookupError, and the caller then uses `load`; where it returns a
    # value, `load` would return the same one (so both binders agree)
    load_exact: Callable[[str], Any] | None = None
    # `dump` never writes a character `escape_markup` would change (digits, signs, dates...)
    markup_free: bool = False


def _dump_float(v: float) -> str:
    if math.isinf(v):
        return "INF" if v > 0 else "-INF"
    return "NaN" if math.isnan(v) else repr(v)


_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}  # xs:boolean's lexical space


def _load_bool(text: str) -> bool:
    try:
        return _BOOL_TEXT[text.strip(XML_WHITESPACE)]
    except KeyError:
        raise ValueError("expected true, false, 1 or 0") from None


def _accepts_int(v: Any) -> bool:
    if type(v) is not int:
        return False
    # str() refuses ints longer than sys.get_int_max_str_digits() (4,300 digits by default, never
    # under 640); a bit length gives an upper bound on the digits without converting
    bits = v.bit_length()
    if bits < 2_000:
        return True
    limit = sys.get_int_max_str_digits()
    if limit == 0 or bits * _LOG10_2 < limit - 1:
        return True
    if (bits - 1) * _LOG10_2 > limit + 1:
        return False
    return abs(v) < _power_of_ten(limit)  # near the limit the bounds cannot tell: count


_LOG10_2 = math.log10(2)


@functools.lru_cache(maxsize=4)
def _power_of_ten(exponent: int) -> int:
    return int(10**exponent)


def _load_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        # int() counts leading zeros against its digit limit; xs:integer allows any number
        stripped = text.strip(XML_WHITESPACE)
        sign = stripped[:1] if stripped[:1] in ("+", "-") else ""
        digits = stripped[len(sign) :].lstrip("0")
        if digits == stripped[len(sign) :]:
            raise
        return int(sign + (digits or "0"))


def _accepts_str(v: Any) -> bool:
    # printable characters (not Cc, Cf, Cs, Co, Cn, Z* but space) are all XML characters, and
    # isprintable() is several times faster than the regex
    return type(v) is str and (v.isprintable() or _INVALID.search(v) is None)


# xs:decimal has no exponent, so Decimal("1E+999999999") would be written as a billion
# digits; keep what a decimal may expand to well inside the message size cap.
_MAX_DECIMAL_DIGITS = 4300


def _accepts_decimal(v: Any) -> bool:
    if type(v) is not Decimal or not v.is_finite():
        return False
    _, digits, exponent = v.as_tuple()
    assert isinstance(exponent, int)
    # the digits of the text `format(v, "f")` writes (but a leading "0."), which is also what
    # the Decimal read back from that text counts: the same value passes either way
    written = len(digits) + exponent if exponent > 0 else max(len(digits), -exponent)
    return written <= _MAX_DECIMAL_DIGITS


def _dump_decimal(v: Decimal) -> str:
    return format(v, "f")


def _load_decimal(text: str) -> Decimal:
    value = Decimal(text)
    # plain notation no longer than the cap holds no more digits than the cap: only other
    # text needs the full check (the same as check_payload's, so what is read can be written)
    if (
        value.is_finite()
        and len(text) <= _MAX_DECIMAL_DIGITS
        and "e" not in text
        and "E" not in text
    ) or _accepts_decimal(value):
        return value
    if not value.is_finite():
        raise ValueError(f"{value} is not a decimal number")
    raise ValueError(
        f"more than {_MAX_DECIMAL_DIGITS:,} digits before or after the point; send a shorter number"
    )


_MAX_OFFSET = timedelta(hours=14)


def _offset_ok(v: datetime) -> bool:
    off = v.utcoffset()
    # xs:dateTime time zones are whole minutes within +-14:00.
    return off is None or (abs(off) <= _MAX_OFFSET and off % timedelta(minutes=1) == timedelta(0))


_END_OF_DAY = re.compile(r"(-?\d{4,}-\d\d-\d\d)T24:00:00(?:\.0+)?(Z|[+-]\d\d:\d\d)?")
_ZONE = re.compile(r"(?:Z|[+-]\d\d:\d\d)$")


def _load_datetime(text: str) -> datetime:
    text = text.strip(XML_WHITESPACE)
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        # xs:dateTime writes the first instant of a day also as 24:00:00 of the day before
        end = _END_OF_DAY.fullmatch(text)
        if end is None:
            raise ValueError(_beyond_python(text, "datetime")) from None
    day = datetime.fromisoformat(f"{end[1]}T00:00:00{end[2] or ''}")
    return day + timedelta(days=1)


def _load_date(text: str) -> date:
    text = text.strip(XML_WHITESPACE)
    try:
        return date.fromisoformat(text)
    except ValueError:
        if _ZONE.search(text) and len(text) > 10:
            raise ValueError(
                "a date with a time zone cannot be held by datetime.date; send the date alone, "
                "or declare the field as datetime"
            ) from None
        raise ValueError(_beyond_python(text, "date")) from None


def _beyond_python(text: str, kind: str) -> str:
    if text.startswith("-") or re.match(r"\d{5}", text):
        return f"Python's {kind} holds the years 0001 to 9999 only"
    return f"not a valid xs:{'dateTime' if kind == 'datetime' else kind}"


CODECS: dict[Any, Codec] = {
    str: Codec("string", "xs:string", str, str, _accepts_str, "text"),
    int: Codec(
        "integer",
        "xs:integer",
        str,
        _load_int,
        _accepts_int,
        "42",
        load_exact=int,
        markup_free=True,
    ),
    float: Codec(
        "double",
        "xs:double",
        _dump_float,
        float,
        lambda v: type(v) is float,
        "3.14",
        markup_free=True,
    ),
    bool: Codec(
        "boolean",
        "xs:boolean",
        lambda v: "true" if v else "false",
        _load_bool,
        lambda v: type(v) is bool,
        "true",
        load_exact=_BOOL_TEXT.__getitem__,
        markup_free=True,
    ),
    Decimal: Codec(
        "decimal",
        "xs:decimal",
        _dump_decimal,
        _load_decimal,
        _accepts_decimal,
        "9.99",
        markup_free=True,
    ),
    datetime: Codec(
        "dateTime",
        "xs:dateTime",
        datetime.isoformat,
        _load_datetime,
        lambda v: type(v) is datetime and _offset_ok(v),
        "2024-01-31T12:00:00+00:00",
        load_exact=datetime.fromisoformat,
        markup_free=True,
    ),
    date: Codec(
        "date",
        "xs:date",
        date.isoformat,
        _load_date,
        lambda v: type(v) is date,
        "2024-01-31",
        load_exact=date.fromisoformat,
        markup_free=True,
    ),
}


def enum_codec(cls: type[enum.Enum]) -> Codec:
    """A codec writing an Enum member as its value's text.

    Every named member travels, aliases included (for a ``Flag``, its named combinations;
    an unnamed combination is refused like a value of another type). An enum whose values are
    all ints is an ``xs:integer`` restricted to them, so ``" 1 "`` or ``+1`` read as 1 as in an
    ``int`` field; any other enum is an ``xs:string`` restricted to its values' exact text.

    Raises:
        PayloadTypeError: the Enum has no members, its values are not str/int, are not
            distinct as text, or hold characters XML cannot carry.
    """
    members = list(dict.fromkeys(cls.__members__.values()))  # an alias names a member again
    if not members:
        raise PayloadTypeError(
            f"enum {cls.__qualname__} has no members: no value of it could travel; use an enum "
            "with members"
        )
    by_text: dict[str, enum.Enum] = {}
    for member in members:
        value = member.value
        if type(value) not in (str, int) or (type(value) is int and not _accepts_int(value)):
            raise PayloadTypeError(
                f"enum {cls.__qualname__}.{member.name} has value {_short(value)}: only str and "
                "int enum values (of at most 4,300 digits) can travel as XML"
            )
        text = str(value)
        if text in by_text or invalid_xml_char(text) is not None:
            raise PayloadTypeError(
                f"enum {cls.__qualname__}.{member.name}: value text {text!r} is duplicated or "
                "not XML text; give each member a distinct value XML can carry"
            )
        by_text[text] = member
    expected = f"expected one of {sorted(by_text)}"
    integral = all(type(m.value) is int for m in members)

    def load(text: str) -> enum.Enum:
        member = by_text.get(text)
        if member is None and integral:
            with contextlib.suppress(ValueError):  # not an integer: not a member either
                member = by_value.get(_load_int(text))
        if member is None:
            raise ValueError(expected)
        return member

    by_value = {m.value: m for m in members}
    accepts: Callable[[Any], bool]
    if issubclass(cls, enum.Flag):
        # any combination of flags is a member too, but only the named ones are in the XSD
        accepts = lambda v: type(v) is cls and v._value_ in by_value  # noqa: E731
    else:
        accepts = lambda v: type(v) is cls  # noqa: E731
    return Codec(
        cls.__qualname__,
        "xs:integer" if integral else "xs:string",
        lambda v: str(v._value_),
        load,
        accepts,
        next(iter(by_text)),
        enumeration=tuple(by_text),
        load_exact=by_text.__getitem__,
        markup_free=integral,
    )


def _short(value: object) -> str:
    if isinstance(value, int) and value.bit_length() >= 2_000:
        return f"an int of {value.bit_length():,} bits"
    return repr(value)
