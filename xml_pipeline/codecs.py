"""Scalar codecs: how one Python value type is written as element text, read back and checked.

Each codec names the XSD type that accepts exactly the text it writes; `accepts` is the
in-process check (strict types: ``True`` is not an ``int``, ``1`` is not a ``float``) so that a
value that passes it always writes text its XSD type accepts.
"""

from __future__ import annotations

import enum
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from xml_pipeline.errors import PayloadTypeError, SchemaViolation

__all__ = [
    "CODECS",
    "Codec",
    "enum_codec",
    "escape_markup",
    "escape_text",
    "invalid_xml_char",
    "xml_safe",
]

# Characters XML 1.0 cannot carry, even escaped.
_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def invalid_xml_char(text: str) -> str | None:
    """The first character of ``text`` that XML 1.0 cannot carry, or ``None``."""
    if text.isprintable():
        return None  # the fast path: every printable character is an XML character
    m = _INVALID.search(text)
    return m.group() if m else None


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
    # may raise ValueError or LookupError, and the caller then uses `load`
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
        return _BOOL_TEXT[text.strip()]
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
    return limit == 0 or bits * _LOG10_2 + 1 <= limit


_LOG10_2 = math.log10(2)


def _accepts_str(v: Any) -> bool:
    # printable characters (not Cc, Cf, Cs, Co, Cn, Z* but space) are all XML characters, and
    # isprintable() is several times faster than the regex
    return type(v) is str and (v.isprintable() or _INVALID.search(v) is None)


# xs:decimal has no exponent, so Decimal("1E+999999999") would be written as a billion
# digits; keep what a decimal may expand to well inside the message size cap.
_MAX_DECIMAL_DIGITS = 4300


def _accepts_decimal(v: Any) -> bool:
    if not isinstance(v, Decimal) or not v.is_finite():
        return False
    exponent = v.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(abs(exponent), len(v.as_tuple().digits)) <= _MAX_DECIMAL_DIGITS


_MAX_OFFSET = timedelta(hours=14)


def _offset_ok(v: datetime) -> bool:
    off = v.utcoffset()
    # xs:dateTime time zones are whole minutes within +-14:00.
    return off is None or (abs(off) <= _MAX_OFFSET and off % timedelta(minutes=1) == timedelta(0))


def _load_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def _load_date(text: str) -> date:
    return date.fromisoformat(text.strip())


CODECS: dict[Any, Codec] = {
    str: Codec("string", "xs:string", str, str, _accepts_str, "text"),
    int: Codec("integer", "xs:integer", str, int, _accepts_int, "42", markup_free=True),
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
        lambda v: format(v, "f"),
        Decimal,
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

    Raises:
        PayloadTypeError: the Enum's values are not str/int, are not distinct as text, or hold
            characters XML cannot carry.
    """
    by_text: dict[str, enum.Enum] = {}
    for member in cls:
        value = member.value
        if type(value) not in (str, int):
            raise PayloadTypeError(
                f"enum {cls.__qualname__}.{member.name} has value {value!r}: only str and int "
                "enum values can travel as XML"
            )
        text = str(value)
        if text in by_text or invalid_xml_char(text) is not None:
            raise PayloadTypeError(
                f"enum {cls.__qualname__}.{member.name}: value text {text!r} is duplicated or "
                "not XML text"
            )
        by_text[text] = member

    def load(text: str) -> enum.Enum:
        try:
            return by_text[text]
        except KeyError:
            raise ValueError(f"expected one of {sorted(by_text)}") from None

    return Codec(
        cls.__qualname__,
        "xs:string",
        lambda v: str(v.value),
        load,
        lambda v: type(v) is cls,
        next(iter(by_text), ""),
        enumeration=tuple(by_text),
        load_exact=by_text.__getitem__,
    )
