"""Payloads as JSON-ready dicts and back: `to_dict` and `from_dict`, for web services.

A payload is a JSON object whose keys are its field names (the root is the object itself, not
wrapped in its tag); a nested dataclass is an object, a list an array, ``None`` is ``null``.
Each scalar travels as `xml_pipeline._wire.json_values` says: as JSON's own type where JSON has
one, else as a string in its XSD type's lexical form, read by the same codec as XML. `from_dict`
checks as reading XML checks: exact types, every key known, values the XSD accepts, and the
parse limits, with the field path in every error (``Order.items[2].price``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from xml_pipeline._errors import PayloadTypeError, SchemaViolation, XmlInputError
from xml_pipeline._settings import did_you_mean
from xml_pipeline._wire.json_values import describe_json, json_form
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline._wire.payloads import _show, payload_spec
from xml_pipeline._wire.shape import FieldSpec, PayloadShape

__all__ = ["from_dict", "to_dict"]

T = TypeVar("T")
_DEFAULT_LIMITS = ParseLimits()


# -- writing -------------------------------------------------------------------------------------


def to_dict(obj: object) -> dict[str, Any]:
    """A ``@payload`` object as a JSON-ready dict: only dict, list, str, int, float, bool, None.

    Every field is a key, ``None`` included (as ``null``) and empty lists (as ``[]``); decimals,
    dates, times and non-finite floats are strings in the lexical form XML writes them in
    (``"9.99"``, ``"2024-01-31"``, ``"INF"``), enums their values. ``json.dumps`` takes the
    result as it is, and `from_dict` reads it back equal. Values are checked as `to_xml`
    checks them.

    Raises:
        PayloadTypeError: ``obj`` is not a payload object.
        SchemaViolation: a value does not fit its field (wrong type, a character XML cannot
            carry, a non-finite Decimal...); the message names the field path.
    """
    spec = payload_spec(obj)
    if isinstance(obj, type):
        raise PayloadTypeError(
            f"to_dict takes a payload object, got the class {spec.cls.__qualname__}; "
            f"pass an instance: {spec.cls.__qualname__}(...)"
        )
    return _write(spec, obj, spec.tag)


def _write(spec: PayloadShape, obj: object, path: str) -> dict[str, Any]:
    if type(obj) is not spec.cls:
        raise SchemaViolation(
            f"expected {spec.cls.__qualname__}, got {type(obj).__qualname__}", path=path
        )
    out: dict[str, Any] = {}
    for f in spec.fields:
        value = getattr(obj, f.name)
        if value is None and f.optional:
            out[f.name] = None
        elif f.repeated:
            if type(value) is not list:  # exactly what to_xml accepts
                raise SchemaViolation(
                    f"expected a list, got {type(value).__name__}", path=f"{path}.{f.name}"
                )
            out[f.name] = [
                _write_one(f, item, f"{path}.{f.name}[{i}]") for i, item in enumerate(value)
            ]
        else:
            out[f.name] = _write_one(f, value, f"{path}.{f.name}")
    return out


def _write_one(f: FieldSpec, value: object, path: str) -> Any:
    if f.nested is not None:
        return _write(f.nested, value, path)
    assert f.codec is not None
    if not f.codec.accepts(value):
        raise SchemaViolation(f"{_show(value)} is not a valid {f.codec.name} value", path=path)
    return json_form(f.codec).dump(f.codec, value)


# -- reading -------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: Mapping[str, Any], *, limits: ParseLimits | None = None) -> T:
    """Bind a JSON object (``json.loads`` output) to a ``@payload`` object, checking it as
    `from_xml` checks XML.

    Every key must name a field; a missing key reads as a missing element does (an
    ``Optional`` field is ``None``, a list ``[]``, a field with a default takes it, any other is
    an error). Values must be of their field's JSON type (see `to_dict`): ``true`` is not an
    integer, ``1.0`` is not an integer, ``"12"`` is not a number, a float is not a decimal
    (send decimals as strings, or integers, so no digit is lost); strings in an XSD form are
    read by the same codecs as XML, without whitespace around them. ``limits`` caps nesting
    (``max_depth``) and size (``max_elements``) as for the equivalent XML document, where the
    object, each nested object and each value (each list item) is one element;
    ``max_bytes`` does not apply here: cap the JSON text before parsing it.

    Raises:
        PayloadTypeError: ``cls`` is not a ``@payload`` class (an instance of one is refused
            too).
        SchemaViolation: a key is unknown (the message lists the valid ones), missing or
            ``null`` where a value is required, or a value is not of its field's type or form;
            the message names the field path (``Order.items[2].price``).
        XmlInputError: the object is nested deeper than ``limits.max_depth`` (``too_deep``)
            or holds more than ``limits.max_elements`` values (``too_many_elements``).
    """
    spec = payload_spec(cls)
    if not isinstance(cls, type):
        raise PayloadTypeError(
            f"from_dict takes the payload class, got an instance of {spec.cls.__qualname__}; "
            f"pass {spec.cls.__qualname__} itself"
        )
    reader = _Reader(limits or _DEFAULT_LIMITS)
    reader.enter(spec.tag, 1)
    return reader.read(spec, data, spec.tag, 1)  # type: ignore[return-value]


class _Reader:
    """One `from_dict` call: its limits and the elements counted so far."""

    def __init__(self, limits: ParseLimits) -> None:
        self.max_depth = limits.max_depth
        self.max_elements = limits.max_elements
        self.elements_left = limits.max_elements

    def enter(self, path: str, depth: int) -> None:
        """Count one element at ``depth`` (the root is 1), as the guarded parser would."""
        if depth > self.max_depth:
            raise XmlInputError(
                f"objects nested deeper than {self.max_depth} levels (counted as XML elements: "
                "the object, each nested object and each value is one level deeper)",
                reason="too_deep",
                path=path,
            )
        self.elements_left -= 1
        if self.elements_left < 0:
            raise XmlInputError(
                f"more than {self.max_elements:,} elements in one document (the object, each "
                "nested object and each value counts as one XML element); send fewer",
                reason="too_many_elements",
                path=path,
            )

    def read(self, spec: PayloadShape, data: object, path: str, depth: int) -> object:
        """The ``spec.cls`` object ``data`` holds; ``depth`` is that of its element."""
        if not isinstance(data, Mapping):
            raise SchemaViolation(
                f"expected an object ({spec.cls.__qualname__}), got {describe_json(data)}",
                path=path,
            )
        by_name = spec.by_tag
        for key in data:
            if type(key) is not str or key not in by_name:
                raise _unknown(spec, key, path)
        values: dict[str, Any] = {}
        for f in spec.fields:
            if f.name not in data:
                # absent as an element is absent in XML: None, [], the default, or an error
                if f.repeated:
                    values[f.name] = []
                elif f.optional:
                    values[f.name] = None
                elif not f.has_default:
                    raise SchemaViolation(
                        f"missing key {f.name!r}: the field is required ({_expected(f)})",
                        path=path,
                    )
                continue
            value = data[f.name]
            where = f"{path}.{f.name}"
            if value is None and f.optional:
                values[f.name] = None
            elif f.repeated:
                if type(value) is not list:
                    hint = "; send [] for none" if value is None else ""
                    raise SchemaViolation(
                        f"expected an array, each item {_expected(f)}, got "
                        f"{describe_json(value)}{hint}",
                        path=where,
                    )
                values[f.name] = [
                    self.read_one(f, item, f"{where}[{i}]", depth + 1)
                    for i, item in enumerate(value)
                ]
            else:
                values[f.name] = self.read_one(f, value, where, depth + 1)
        return spec.cls(**values)

    def read_one(self, f: FieldSpec, value: object, path: str, depth: int) -> object:
        """One value of field ``f`` (a list's item, for a list): a nested object or a scalar."""
        self.enter(path, depth)
        if value is None:
            hint = "; omit the key to take its default" if f.has_default and not f.repeated else ""
            raise SchemaViolation(f"expected {_expected(f)}, got null{hint}", path=path)
        if f.nested is not None:
            return self.read(f.nested, value, path, depth)
        assert f.codec is not None
        try:
            return json_form(f.codec).load(f.codec, value)
        except ValueError as exc:
            raise SchemaViolation(str(exc), path=path) from None


def _expected(f: FieldSpec) -> str:
    if f.nested is not None:
        return f"an object ({f.nested.cls.__qualname__})"
    assert f.codec is not None
    form = json_form(f.codec)
    if f.codec.enumeration:
        values = form.schema(f.codec)["enum"]
        return f"one of {values}"
    return form.expected


def _unknown(spec: PayloadShape, key: object, path: str) -> SchemaViolation:
    names = [f.name for f in spec.fields]
    name = spec.cls.__qualname__
    keys = f"{name} has the keys {', '.join(names)}" if names else f"{name} has no keys"
    if type(key) is not str:
        return SchemaViolation(f"key {_show(key)} is not a string; {keys}", path=path)
    return SchemaViolation(f"unknown key {_show(key)}; {keys}{did_you_mean(key, names)}", path=path)
