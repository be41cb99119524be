"""How each scalar codec's values travel as JSON: what `to_dict` writes, what `from_dict` reads,
and the JSON Schema of exactly what it reads.

JSON has strings, numbers, booleans and null. Where JSON has a type of its own for a value, the
value travels as it; where it has none (decimals, dates, times, the non-finite doubles), it
travels as a string in the lexical form of its XSD type, written by the codec's ``dump`` and
read by the codec's ``load``, the very functions the XML writer and binders use, so that XML and
JSON read every value alike:

==========  ==============================  ===============================================
type        written                          read (anything else is refused, naming it)
==========  ==============================  ===============================================
str         a string                         a string of characters XML can carry
int         an integer                       an integer: not ``true``, not ``1.0``, not ``"1"``
float       a number; ``"INF"``, ``"-INF"``  a number, or one of those three strings
            or ``"NaN"`` when not finite
bool        ``true`` / ``false``             ``true`` / ``false`` only
Decimal     a string in xs:decimal form      such a string, or an integer; never a float,
            (``"9.99"``, no exponent)        which cannot hold every decimal exactly
datetime    a string in xs:dateTime form     such a string (``T``, seconds, optional zone)
date        a string in xs:date form         such a string (``2024-01-31``)
Enum        its value: an integer when all   the same; text exactly as written, as in XML
            values are ints, else its text
==========  ==============================  ===============================================

Strings in an XSD form are read without whitespace around them (XML collapses it, JSON has no
such rule) and are checked against the form's regular expression before the codec reads them:
Python's ``fromisoformat`` also takes ``20240131`` or a space for ``T``, which XML refuses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from xml_pipeline._wire.codecs import CODECS, Codec, invalid_xml_char
from xml_pipeline._wire.payloads import _show

__all__ = ["JsonForm", "describe_json", "json_form"]

# the lexical forms of the XSD types that travel as strings (XML Schema 1.1 part 2), written
# for both Python's `re` and ECMA-262 (JSON Schema's patterns): [0-9], never \d, which is
# every Unicode digit in Python. (Python's `re`, which the jsonschema package uses, lets "$"
# match before a final newline, so "9.99\n" passes its check of the JSON Schema pattern; from_dict
# matches the whole string and refuses it.)
_YEAR_MONTH_DAY = r"-?(?:[1-9][0-9]{3,}|0[0-9]{3})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
_TIME = r"(?:(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?|24:00:00(?:\.0+)?)"
_ZONE = r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DECIMAL_FORM = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DATE_FORM = f"{_YEAR_MONTH_DAY}{_ZONE}?"  # a zone is in the form; the codec then refuses it
_DATETIME_FORM = f"{_YEAR_MONTH_DAY}T{_TIME}{_ZONE}?"
# a string of characters XML 1.0 can carry (what `Codec.accepts` checks for a str)
_XML_TEXT = r"^[^\u0000-\u0008\u000B\u000C\u000E-\u001F\uD800-\uDFFF\uFFFE\uFFFF]*$"
_DOUBLE_WORDS = ("INF", "-INF", "NaN")  # xs:double's spellings of what JSON numbers lack


@dataclass(frozen=True, slots=True)
class JsonForm:
    """How one codec's values travel as JSON.

    ``dump`` takes a value the codec ``accepts`` and returns its JSON value; ``load`` takes a
    JSON value and returns the Python value, or raises ValueError saying what was expected and
    what came; ``schema`` is the JSON Schema of what ``load`` reads (as far as JSON Schema can
    say it: see `json_schema`).
    """

    expected: str
    dump: Callable[[Codec, Any], Any]
    load: Callable[[Codec, Any], Any]
    schema: Callable[[Codec], dict[str, Any]]


def describe_json(value: object) -> str:
    """A JSON value as an error message names it: ``the string '12'``, ``null``, ``an array``."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is bool:
        return f"the boolean {'true' if value else 'false'}"
    if kind is str:
        return f"the string {_show(value)}"
    if isinstance(value, int) and kind is int:
        return _show(value) if value.bit_length() >= 2_000 else f"the integer {value}"
    if kind is float:
        return f"the number {value!r}"
    if isinstance(value, Mapping):
        return "an object"
    if kind is list:
        return "an array"
    return (
        f"a {kind.__qualname__} object (from_dict reads JSON values: dict, list, str, int, "
        "float, bool, None)"
    )


def _wrong(form: JsonForm, value: object, hint: str = "") -> ValueError:
    return ValueError(f"expected {form.expected}, got {describe_json(value)}{hint}")


def _lexical(codec: Codec, text: str) -> Any:
    """``codec.load`` of text already in the XSD form, its refusal worded as XML's binder does."""
    try:
        return codec.load(text)
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(f"{_show(text)} is not a valid {codec.name}: {exc}") from None


def _int_text(value: int) -> str:
    if not CODECS[int].accepts(value):  # str() refuses it
        raise ValueError(f"{_show(value)} has more digits than Python converts to text")
    return str(value)


def _same(codec: Codec, value: Any) -> Any:
    return value


# -- the forms, one per kind of codec -------------------------------------------------------------


def _load_string(codec: Codec, value: Any) -> Any:
    if type(value) is not str:
        raise _wrong(_STRING, value)
    if not codec.accepts(value):
        bad = invalid_xml_char(value) or "\ufffd"
        raise ValueError(
            f"the string holds U+{ord(bad):04X}, a character XML 1.0 cannot carry; remove it"
        )
    return value


_STRING = JsonForm(
    "a string",
    _same,
    _load_string,
    lambda codec: {"type": "string", "pattern": _XML_TEXT},
)


def _load_integer(codec: Codec, value: Any) -> Any:
    if type(value) is not int:
        hint = ""
        if type(value) is str:
            hint = "; send it without quotes"
        elif type(value) is float and value.is_integer():
            hint = f"; send {int(value)}, without a fraction"
        raise _wrong(_INTEGER, value, hint)
    if not codec.accepts(value):
        raise ValueError(f"{_show(value)} has more digits than Python converts to text")
    return value


_INTEGER = JsonForm(
    "an integer (a JSON number without a fraction or exponent)",
    _same,
    _load_integer,
    lambda codec: {"type": "integer"},
)


def _dump_double(codec: Codec, value: float) -> Any:
    return value if math.isfinite(value) else codec.dump(value)


def _load_double(codec: Codec, value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        return _lexical(codec, _int_text(value))  # as xs:double reads "12": the nearest double
    if kind is str and value in _DOUBLE_WORDS:
        return _lexical(codec, value)
    raise _wrong(_DOUBLE, value)


_DOUBLE = JsonForm(
    'a number (or "INF", "-INF", "NaN")',
    _dump_double,
    _load_double,
    lambda codec: {"anyOf": [{"type": "number"}, {"enum": list(_DOUBLE_WORDS)}]},
)


def _load_boolean(codec: Codec, value: Any) -> Any:
    if type(value) is not bool:
        raise _wrong(_BOOLEAN, value)
    return value


_BOOLEAN = JsonForm("true or false", _same, _load_boolean, lambda codec: {"type": "boolean"})


def _dump_text(codec: Codec, value: Any) -> Any:
    return codec.dump(value)


def _lexical_form(pattern: str, kind: str) -> JsonForm:
    """The form of a type that travels as a string in its XSD form (``kind``: decimal...)."""
    compiled = re.compile(pattern)
    example = {"decimal": "9.99", "dateTime": "2024-01-31T12:00:00+00:00"}.get(kind, "2024-01-31")

    def load(codec: Codec, value: Any) -> Any:
        if type(value) is str:
            if compiled.fullmatch(value) is None:
                raise ValueError(f"{_show(value)} is not in xs:{kind} form (like {example!r})")
            return _lexical(codec, value)
        if kind == "decimal" and type(value) is int:
            return _lexical(codec, _int_text(value))
        if kind == "decimal" and type(value) is float:
            raise _wrong(
                form,
                value,
                f": a float cannot hold every decimal exactly; send it as a string, "
                f"{str(value)!r}, to keep every digit",
            )
        raise _wrong(form, value)

    def schema(codec: Codec) -> dict[str, Any]:  # a new dict each time: callers may change it
        string: dict[str, Any] = {"type": "string", "pattern": f"^{pattern}$"}
        if kind == "decimal":
            return {"anyOf": [string, {"type": "integer"}]}
        # "format": "date-time" is RFC 3339's, which requires a time zone that xs:dateTime
        # (and Python) leave optional: validators that check formats would refuse naive times
        return {**string, "format": "date"} if kind == "date" else string

    if kind == "decimal":
        expected = f"a decimal: a string in xs:decimal form (like {example!r}) or an integer"
    else:
        expected = f"a string in xs:{kind} form (like {example!r})"
    form = JsonForm(expected, _dump_text, load, schema)
    return form


def _load_enum(codec: Codec, value: Any) -> Any:
    integral = codec.xsd_type == "xs:integer"
    if type(value) is not (int if integral else str):
        raise ValueError(f"expected one of {_enum_values(codec)}, got {describe_json(value)}")
    try:
        return codec.load(str(value))
    except ValueError:
        raise ValueError(
            f"{_show(value)} is not a {codec.name}: expected one of {_enum_values(codec)}"
        ) from None


def _enum_values(codec: Codec) -> list[Any]:
    if codec.xsd_type == "xs:integer":
        return [int(text) for text in codec.enumeration]
    return list(codec.enumeration)


def _dump_enum(codec: Codec, value: Any) -> Any:
    return value._value_ if codec.xsd_type == "xs:integer" else codec.dump(value)


_ENUM = JsonForm(
    "one of the enum's values",
    _dump_enum,
    _load_enum,
    lambda codec: {"enum": _enum_values(codec)},
)

_FORMS = {
    "xs:string": _STRING,
    "xs:integer": _INTEGER,
    "xs:double": _DOUBLE,
    "xs:boolean": _BOOLEAN,
    "xs:decimal": _lexical_form(_DECIMAL_FORM, "decimal"),
    "xs:dateTime": _lexical_form(_DATETIME_FORM, "dateTime"),
    "xs:date": _lexical_form(_DATE_FORM, "date"),
}


def json_form(codec: Codec) -> JsonForm:
    """The JSON form of ``codec``'s values (every codec in `CODECS`, and every enum codec)."""
    return _ENUM if codec.enumeration else _FORMS[codec.xsd_type]
