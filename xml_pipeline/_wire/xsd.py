"""Generated documents for a payload class: its XSD, an example instance, a prompt description.

All three are derived from the same `PayloadShape` that `to_xml` writes from, so they cannot
drift apart. Reach them through `PayloadShape.xsd`, `.schema`, `.example()` and `.describe()`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from lxml import etree

if TYPE_CHECKING:
    from xml_pipeline._wire.shape import FieldSpec, PayloadShape

__all__ = ["describe", "example_xml", "xsd_text"]

_XS = "http://www.w3.org/2001/XMLSchema"
# XSD types whose whitespace rule is "collapse" but whose libxml2 check refuses whitespace
# around some values: " 2024-01-31" (xs:date, xs:dateTime) or "INF " (xs:double). A union of
# the one type means the same by the spec, and libxml2 collapses the whitespace first for it.
_UNION_OF_ONE = frozenset({"xs:date", "xs:dateTime", "xs:double"})


def _xs(parent: etree._Element, kind: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{_XS}}}{kind}", attrs)


def xsd_text(spec: PayloadShape) -> str:
    """The XSD (as text) that accepts exactly the documents `to_xml` writes for ``spec``."""
    root = etree.Element(f"{{{_XS}}}schema", nsmap={"xs": _XS})
    root.set("elementFormDefault", "unqualified")
    element = _xs(root, "element", name=spec.tag)
    _complex_type(element, spec)
    text: str = etree.tostring(root, pretty_print=True, encoding="unicode")
    return text


def _complex_type(parent: etree._Element, spec: PayloadShape) -> None:
    sequence = _xs(_xs(parent, "complexType"), "sequence")
    for f in spec.fields:
        attrs = {"name": f.name}
        if f.optional or f.has_default or f.repeated:
            attrs["minOccurs"] = "0"
        if f.repeated:
            attrs["maxOccurs"] = "unbounded"
        if f.nested is not None:
            _complex_type(_xs(sequence, "element", **attrs), f.nested)
        elif f.codec is not None and f.codec.enumeration:
            restriction = _xs(
                _xs(_xs(sequence, "element", **attrs), "simpleType"),
                "restriction",
                base=f.codec.xsd_type,
            )
            for value in f.codec.enumeration:
                _xs(restriction, "enumeration", value=value)
        elif f.codec is not None and f.codec.xsd_type in _UNION_OF_ONE:
            simple = _xs(_xs(sequence, "element", **attrs), "simpleType")
            _xs(simple, "union", memberTypes=f.codec.xsd_type)
        else:
            assert f.codec is not None
            _xs(sequence, "element", type=f.codec.xsd_type, **attrs)


def example_xml(spec: PayloadShape) -> bytes:
    """An example instance document: every field present once, with a typical value."""
    root = etree.Element(spec.tag)
    _example_fields(root, spec)
    data: bytes = etree.tostring(root, encoding="UTF-8", pretty_print=True)
    return data


def _example_fields(parent: etree._Element, spec: PayloadShape) -> None:
    for f in spec.fields:
        child = etree.SubElement(parent, f.name)
        if f.nested is not None:
            _example_fields(child, f.nested)
        else:
            assert f.codec is not None
            child.text = _default_text(spec, f) or f.codec.example


def _default_text(spec: PayloadShape, f: FieldSpec) -> str | None:
    default = _default_value(spec, f)
    if default is None or f.codec is None or f.repeated or not f.codec.accepts(default):
        return None
    return f.codec.dump(default)


def _default_value(spec: PayloadShape, f: FieldSpec) -> object:
    for field in dataclasses.fields(spec.cls):
        if field.name == f.name:
            return None if field.default is dataclasses.MISSING else field.default
    return None


def describe(spec: PayloadShape) -> str:
    """A short, prompt-ready description of the payload's elements, one line per field."""
    head = f"<{spec.tag}>" + (f": {spec.doc.splitlines()[0]}" if spec.doc else "")
    lines = [head]
    _describe_fields(spec, lines, indent="  ")
    return "\n".join(lines)


def _describe_fields(spec: PayloadShape, lines: list[str], indent: str) -> None:
    for f in spec.fields:
        if f.repeated:
            count = "repeated, zero or more times"
        elif f.optional:
            count = "optional, omit when absent"
        elif f.has_default:
            default = _default_text(spec, f)
            count = "optional" + (f", default {default}" if default is not None else "")
        else:
            count = "required"
        if f.nested is not None:
            lines.append(f"{indent}<{f.name}> ({count}) containing:")
            _describe_fields(f.nested, lines, indent + "  ")
            continue
        assert f.codec is not None
        kind = f.codec.xsd_type.removeprefix("xs:")
        if f.codec.enumeration:
            kind = "one of " + ", ".join(f.codec.enumeration)
        lines.append(f"{indent}<{f.name}> {kind} ({count})")
