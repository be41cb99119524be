"""The JSON Schema of a payload class: what `from_dict` reads, for web services and their docs.

Derived from the same `PayloadShape` as the XSD, field by field, with each scalar's schema
taken from its `JsonForm` (the same place `from_dict` reads it from), so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from xml_pipeline._wire.json_values import json_form
from xml_pipeline._wire.payloads import payload_spec
from xml_pipeline._wire.shape import FieldSpec, PayloadShape
from xml_pipeline._wire.xsd import _default_text, _default_value

__all__ = ["json_schema"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(cls: type) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the objects `from_dict` reads for ``cls``.

    Objects have ``additionalProperties: false`` and list as ``required`` the fields an XML
    document must hold too (no default, not ``Optional``, not a list); ``Optional`` fields also
    take ``null``. Decimals, dates and times are strings with the ``pattern`` of their XSD
    lexical form (dates also ``format: date``; times carry no ``format``, since RFC 3339's
    ``date-time`` requires the time zone that xs:dateTime leaves optional), enums an ``enum``
    of their values, non-finite floats the strings ``"INF"``, ``"-INF"``, ``"NaN"``. The root
    holds ``examples``: the example document (`PayloadSpec.example`) as `to_dict` writes it.

    JSON Schema cannot say everything `from_dict` checks; it accepts, and `from_dict` refuses:
    ``1.0`` for an integer (JSON Schema's data model has one kind of number), times Python
    cannot hold (year 10000, February 30), such dates too where the validator does not check
    formats, numbers of more than 4,300 digits, and input past the parse limits.

    Raises:
        PayloadTypeError: ``cls`` is not a ``@payload`` class.
    """
    spec = payload_spec(cls)
    schema: dict[str, Any] = {"$schema": DRAFT, "title": spec.tag, **_object(spec)}
    schema["examples"] = [_example(spec)]
    return schema


def _object(spec: PayloadShape) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    if spec.doc:
        schema["description"] = spec.doc
    schema["type"] = "object"
    schema["properties"] = {f.name: _field(spec, f) for f in spec.fields}
    required = [f.name for f in spec.fields if not (f.optional or f.repeated or f.has_default)]
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    return schema


def _field(spec: PayloadShape, f: FieldSpec) -> dict[str, Any]:
    if f.nested is not None:
        one = _object(f.nested)
    else:
        assert f.codec is not None
        one = json_form(f.codec).schema(f.codec)
    if f.repeated:
        return {"type": "array", "items": one}
    schema = {"anyOf": [one, {"type": "null"}]} if f.optional else dict(one)
    default = None if f.optional else _default(spec, f)  # a missing Optional reads as None
    if default is not None:
        schema["default"] = default
    return schema


def _default(spec: PayloadShape, f: FieldSpec) -> Any:
    """The JSON value of the field's plain default, if it has one that is a valid scalar (the
    default the XSD's description gives)."""
    default = _default_value(spec, f)
    if default is None or f.codec is None or not f.codec.accepts(default):
        return None
    return json_form(f.codec).dump(f.codec, default)


def _example(spec: PayloadShape) -> dict[str, Any]:
    """The example document (`xsd.example_xml`) as `to_dict` writes it: every field once, with
    its default or its codec's example value. Built from the shape, like the document, so a
    class whose constructor checks more than its types still has one."""
    example: dict[str, Any] = {}
    for f in spec.fields:
        if f.nested is not None:
            one: Any = _example(f.nested)
        else:
            assert f.codec is not None
            text = _default_text(spec, f) or f.codec.example
            one = json_form(f.codec).dump(f.codec, f.codec.load(text))
        example[f.name] = [one] if f.repeated else one
    return example
