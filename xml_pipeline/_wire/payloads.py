"""Payload classes: ``@payload`` dataclasses to XML and back.

A payload's root element is its class name (or the ``tag`` given to ``@payload``); each field is
a child element named exactly as the field. Lists repeat the field's element once per item;
``Optional`` fields are omitted when ``None``; nested dataclasses become an element named after
the field holding the nested class's fields.

Three views of one *field specification* (`FieldSpec`) keep each other honest: `to_xml` writes
it, the XSD (`xml_pipeline._wire.xsd`) checks bytes from outside against it, and `check_payload`
checks objects handed between handlers inside one process without building a tree.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from lxml import etree

from xml_pipeline._errors import PayloadTypeError, SchemaViolation
from xml_pipeline._wire.codecs import (
    CODECS,
    Codec,
    enum_codec,
    escape_markup,
    invalid_xml_char,
    xml_name_problem,
)
from xml_pipeline._wire.codegen import Unusual, compile_binder, compile_writer
from xml_pipeline._wire.parsing import ParseLimits, parse_guarded
from xml_pipeline._wire.shape import FieldSpec, PayloadShape
from xml_pipeline._wire.xsd import describe, example_xml, xsd_text

__all__ = [
    "PayloadSpec",
    "check_payload",
    "from_element",
    "from_xml",
    "is_payload",
    "payload",
    "payload_spec",
    "to_element",
    "to_xml",
]

T = TypeVar("T")
_SPEC_ATTR = "__xml_payload__"
_SUPPORTED = "str, int, float, bool, Decimal, datetime, date, Enum, Optional, list, dataclass"


class PayloadSpec(PayloadShape):
    """Everything xml-pipeline knows about one payload (or nested) dataclass: its shape, and
    the documents derived from it (XSD, example, description), each made once when asked for.
    """

    @property
    def xsd(self) -> str:
        """The XSD text that accepts exactly what `to_xml` writes for this class."""
        if self._xsd is None:
            self._xsd = xsd_text(self)
        return self._xsd

    @property
    def schema(self) -> etree.XMLSchema:
        """The compiled XSD, compiled once per class."""
        if self._schema is None:
            self._schema = etree.XMLSchema(etree.fromstring(self.xsd.encode()))
        return self._schema

    def example(self) -> bytes:
        """An example instance document (valid against `schema`)."""
        return example_xml(self)

    def describe(self) -> str:
        """A short description of the fields, with the real element names, for LLM prompts."""
        return describe(self)


@typing.overload
def payload(cls: type[T], /) -> type[T]: ...
@typing.overload
def payload(*, tag: str | None = None) -> Callable[[type[T]], type[T]]: ...
def payload(cls: type[T] | None = None, /, *, tag: str | None = None) -> Any:
    """Mark a dataclass as a message type that travels as XML.

    Use it above ``@dataclass``: ``@payload`` or ``@payload(tag="Calc")``. The class's fields
    are checked at once.

    Raises:
        PayloadTypeError: the class is not a dataclass, the tag or a field name is not an XML
            name, or a field has a type that cannot travel as XML. The message starts with
            ``file:line:`` of the class (of the field's annotation, for a field) and names the
            class, field and type; ``.file`` and ``.line`` hold the same place.
    """

    def decorate(c: type[T]) -> type[T]:
        try:
            spec = _compile(c, tag or c.__name__, stack=())
        except _Refused as refused:
            raise refused.error() from None
        setattr(c, _SPEC_ATTR, spec)
        return c

    return decorate if cls is None else decorate(cls)


def is_payload(obj: object) -> bool:
    """Whether ``obj`` is a ``@payload`` class or an instance of one."""
    cls = obj if isinstance(obj, type) else type(obj)
    return isinstance(cls.__dict__.get(_SPEC_ATTR), PayloadSpec)


def payload_spec(obj: object) -> PayloadSpec:
    """The `PayloadSpec` of a ``@payload`` class or instance.

    Raises:
        PayloadTypeError: ``obj`` is not a ``@payload`` class or instance.
    """
    cls = obj if isinstance(obj, type) else type(obj)
    spec = cls.__dict__.get(_SPEC_ATTR)
    if not isinstance(spec, PayloadSpec):
        raise PayloadTypeError(
            f"{cls.__qualname__} is not a payload class; decorate it with @payload above @dataclass"
        )
    return spec


class _Refused(Exception):
    """A class cannot be a payload: the message, and the class and field it is about."""

    def __init__(self, message: str, cls: type, field: str | None = None) -> None:
        super().__init__(message)
        self.message, self.cls, self.field = message, cls, field

    def error(self) -> PayloadTypeError:
        """The user's error, at the class's (or field's) line, else at the decorator's call."""
        file, line = _source_line(self.cls, self.field) or _caller_line()
        return PayloadTypeError(self.message, file=file, line=line)


def _compile(cls: type, tag: str, *, stack: tuple[type, ...]) -> PayloadSpec:
    where = _name(cls)
    if not dataclasses.is_dataclass(cls):
        raise _Refused(f"{where} must be a dataclass: put @payload above @dataclass", cls)
    if not stack and (problem := xml_name_problem(tag)) is not None:
        # a nested class's tag is its field's name, checked with the field
        raise _Refused(
            f"{where}: {tag!r} is not usable as an XML element name ({problem}); rename the "
            "class or give @payload(tag=...)",
            cls,
        )
    if cls in stack:
        raise _Refused(f"{where} contains itself; recursive payloads are not supported", cls)
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise _unresolved(cls, exc) from None
    except (TypeError, SyntaxError) as exc:
        raise _Refused(
            f"{where}: cannot read the field annotations ({exc}); write each as a type", cls
        ) from None
    specs = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        specs.append(_field(cls, f.name, hints[f.name], has_default, (*stack, cls)))
    doc = (cls.__doc__ or "").strip()
    if doc.startswith(f"{cls.__name__}("):
        doc = ""  # the signature @dataclass writes when the class has no docstring
    spec = PayloadSpec(cls=cls, tag=tag, fields=tuple(specs), doc=doc)
    spec._fast_bind = compile_binder(spec)
    spec._fast_write = compile_writer(spec)
    spec._fast_check = compile_writer(spec, write=False)
    return spec


def _unresolved(cls: type, exc: NameError) -> _Refused:
    """The error for an annotation that names something not defined (yet), naming the field."""
    missing = exc.name
    for f in dataclasses.fields(cls):
        text = f.type if isinstance(f.type, str) else _type_text(f.type)
        if missing and re.search(rf"\b{re.escape(missing)}\b", text):
            where = f"{_name(cls)}.{f.name}"
            if missing == cls.__name__:
                return _Refused(
                    f"{where}: type {text} refers back to {_name(cls)}; recursive "
                    "payloads are not supported",
                    cls,
                    f.name,
                )
            return _Refused(
                f"{where}: cannot resolve type {text} ({missing!r} is not defined); define "
                "nested classes before the classes that use them",
                cls,
                f.name,
            )
    return _Refused(
        f"{_name(cls)}: cannot resolve a field annotation ({exc}); define nested classes "
        "before the classes that use them",
        cls,
    )


def _field(
    cls: type, name: str, hint: Any, has_default: bool, stack: tuple[type, ...]
) -> FieldSpec:
    where = f"{_name(cls)}.{name}"
    text = _type_text(hint)
    problem = xml_name_problem(name)
    if problem is not None:
        raise _Refused(
            f"{where}: the field name cannot name an XML element: {problem}; rename the field",
            cls,
            name,
        )
    optional = repeated = False
    inner = hint
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(inner) if a is not type(None)]
        if len(args) != 1 or len(typing.get_args(inner)) != 2:
            raise _Refused(f"{where}: union {text} is not supported; use Optional[T]", cls, name)
        optional, inner = True, args[0]
        origin = typing.get_origin(inner)
    if origin is list:
        if optional:
            raise _Refused(
                f"{where}: type {text} is not supported: Optional[list[...]] is ambiguous in XML; "
                "use list[...] (empty list = no elements)",
                cls,
                name,
            )
        (inner,) = typing.get_args(inner) or (Any,)
        repeated = True
        if typing.get_origin(inner) is not None:
            raise _Refused(
                f"{where}: {text} is not supported; list items must be scalars or dataclasses",
                cls,
                name,
            )
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        if inner in stack:
            raise _Refused(
                f"{where}: type {text} refers back to {_name(inner)}; recursive payloads "
                "are not supported",
                cls,
                name,
            )
        nested = _compile(inner, name, stack=stack)
        return FieldSpec(name, None, nested, optional, repeated, has_default, text)
    try:
        codec = _codec_for(inner)
    except PayloadTypeError as exc:  # an enum whose values cannot travel
        raise _Refused(f"{where}: {exc.message}", cls, name) from None
    if codec is None:
        if isinstance(inner, type) and inspect.get_annotations(inner):
            raise _Refused(  # a class meant as a nested payload, missing its decorator
                f"{where}: type {text} is not a dataclass; decorate {inner.__qualname__} with "
                "@dataclass to nest it",
                cls,
                name,
            )
        raise _Refused(
            f"{where}: type {text} is not supported (supported: {_SUPPORTED}); change the "
            "annotation to one of these",
            cls,
            name,
        )
    return FieldSpec(name, codec, None, optional, repeated, has_default, text)


def _name(cls: type) -> str:
    """The class's qualified name as written, without the ``<locals>`` of a function."""
    return cls.__qualname__.rpartition("<locals>.")[2]


def _source_line(cls: type, field: str | None) -> tuple[str, int] | None:
    """Where the user wrote ``cls`` (its ``class`` line), or the annotation of ``field`` in it
    or in the base class that declares it; ``None`` when the source cannot be found (a class
    built by ``make_dataclass``, or in an interactive session)."""
    owner = cls
    if field is not None:  # a field may come from a base dataclass
        owner = next((k for k in cls.__mro__ if field in vars(k).get("__annotations__", {})), cls)
    try:
        file = inspect.getsourcefile(owner)
        lines, start = inspect.getsourcelines(owner)
    except (OSError, TypeError):
        return None
    if file is None:
        return None
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return _shown(file), start
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.ClassDef):
        return _shown(file), start
    for stmt in node.body if field is not None else ():
        if isinstance(stmt, ast.AnnAssign) and getattr(stmt.target, "id", None) == field:
            return _shown(file), start + stmt.lineno - 1
    return _shown(file), start + node.lineno - 1  # the class line, after its decorators


def _caller_line() -> tuple[str, int]:
    """The first frame outside this module: where ``payload`` was called."""
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    return _shown(frame.f_code.co_filename), frame.f_lineno


def _shown(file: str) -> str:
    """``file`` relative to the working directory when it is under it, as tools print it."""
    try:
        relative = os.path.relpath(file)
    except ValueError:  # another drive
        return file
    return file if relative.startswith(os.pardir) else relative


def _codec_for(tp: Any) -> Codec | None:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return enum_codec(tp)
    return CODECS.get(tp)


def _type_text(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


# -- writing -------------------------------------------------------------------------------------


def to_xml(obj: object) -> bytes:
    """Serialize a ``@payload`` object to XML bytes (UTF-8, no declaration).

    It checks every value as `check_payload` does (and raises where it would), so a caller
    that needs the bytes anyway need not check first.

    Raises:
        PayloadTypeError: ``obj`` is not a payload object.
        SchemaViolation: a value does not fit its field (wrong type, a character XML cannot
            carry, a non-finite Decimal...); the message names the field path.
    """
    spec = type(obj).__dict__.get(_SPEC_ATTR)  # payload_spec's lookup, without the call
    if type(spec) is not PayloadSpec:
        spec = payload_spec(obj)  # a class, or not a payload (which raises)
    try:
        return f"<{spec.tag}>{spec._fast_write(obj)}</{spec.tag}>".encode()
    except Unusual:  # a value that does not fit: the general writer says which, and where
        parts: list[str] = []
        _write(spec, spec.tag, obj, parts, "/" + spec.tag)
        return "".join(parts).encode()


def _write(spec: PayloadShape, tag: str, obj: object, out: list[str], path: str) -> None:
    # paths are built only for nested elements and errors: this runs for every field sent
    if type(obj) is not spec.cls:
        raise SchemaViolation(
            f"expected {spec.cls.__qualname__}, got {type(obj).__qualname__}", path=path
        )
    out.append(f"<{tag}>")
    for name, optional, repeated, nested, accepts, dump, f in spec._walkers:
        value = getattr(obj, name)
        if value is None and optional:
            continue
        if repeated:
            if type(value) is not list:  # exactly what check_payload accepts
                raise SchemaViolation(
                    f"expected a list, got {type(value).__name__}", path=f"{path}/{name}"
                )
            items: list[Any] | tuple[Any] = value
        else:
            items = (value,)
        for item in items:
            if nested is not None:
                _write(nested, name, item, out, f"{path}/{name}")
            elif accepts(item):  # type: ignore[misc]
                # `accepts` ruled out characters XML cannot carry: only markup needs escaping
                out.append(f"<{name}>{escape_markup(dump(item))}</{name}>")  # type: ignore[misc]
            else:
                raise _bad_value(f, item, path)
    out.append(f"</{tag}>")


def _bad_value(f: FieldSpec, value: object, path: str) -> SchemaViolation:
    assert f.codec is not None
    bad = invalid_xml_char(value) if type(value) is str else None
    why = f" (U+{ord(bad):04X} cannot be carried by XML 1.0)" if bad is not None else ""
    return SchemaViolation(
        f"{_show(value)} is not a valid {f.codec.name} value{why}", path=f"{path}/{f.name}"
    )


def _show(value: object) -> str:
    """A short repr for an error message (repr refuses ints over 4,300 digits)."""
    if type(value) is int and value.bit_length() >= 2_000:
        return f"an int of {value.bit_length():,} bits"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text):,} characters)"


def to_element(obj: object) -> etree._Element:
    """The payload as an lxml element (built from `to_xml`, so both always agree)."""
    return etree.fromstring(to_xml(obj))


# -- checking objects in process ----------------------------------------------------------------


def check_payload(obj: object) -> None:
    """Check an in-process payload object against its field spec, without building XML.

    Whatever this accepts, the class's XSD accepts once written with `to_xml` (a property
    test pins that). It is the cheap check used between handlers inside one process.

    Raises:
        PayloadTypeError: ``obj`` is not a payload object.
        SchemaViolation: a field does not fit; the message names the field path.
    """
    spec = type(obj).__dict__.get(_SPEC_ATTR)  # payload_spec's lookup, without the call
    if type(spec) is not PayloadSpec:
        spec = payload_spec(obj)  # a class, or not a payload (which raises)
    try:
        spec._fast_check(obj)
    except Unusual:  # a value that does not fit: the general check says which, and where
        _check(spec, obj, "/" + spec.tag)


def _check(spec: PayloadShape, obj: object, path: str) -> None:
    if type(obj) is not spec.cls:
        raise SchemaViolation(
            f"expected {spec.cls.__qualname__}, got {type(obj).__qualname__}", path=path
        )
    for name, optional, repeated, nested, accepts, _, f in spec._walkers:
        value = getattr(obj, name)
        if value is None and optional:
            continue
        if repeated:
            if type(value) is not list:
                raise SchemaViolation(
                    f"expected a list, got {type(value).__name__}", path=f"{path}/{name}"
                )
            if nested is not None:
                for item in value:
                    _check(nested, item, f"{path}/{name}")
            else:
                for item in value:
                    if not accepts(item):  # type: ignore[misc]
                        raise _bad_value(f, item, path)
        elif nested is not None:
            _check(nested, value, f"{path}/{name}")
        elif not accepts(value):  # type: ignore[misc]
            raise _bad_value(f, value, path)


# -- reading -------------------------------------------------------------------------------------


def from_xml(cls: type[T], data: bytes | str, *, limits: ParseLimits | None = None) -> T:
    """Parse XML from outside (guarded), validate it with the class's XSD, bind it.

    Raises:
        XmlInputError: the input was rejected before parsing finished (size, DOCTYPE, depth,
            malformed...), with its reason code.
        SchemaViolation: the document does not conform to the class's XSD.
    """
    return from_element(cls, parse_guarded(data, limits))


def from_element(cls: type[T], element: etree._Element, *, validate: bool = True) -> T:
    """Bind an lxml element to a payload object, validating it with the XSD first.

    ``validate=False`` skips the XSD for elements already validated; binding still rejects
    what it cannot bind.

    Raises:
        SchemaViolation: the element does not conform (with line and element path).
    """
    spec = payload_spec(cls)
    if validate:
        schema = spec._schema or spec.schema
        if not schema.validate(element):
            raise _invalid(spec, schema, element)
    elif element.tag != spec.tag:
        raise SchemaViolation(
            f"expected root element <{spec.tag}>, got <{element.tag}>",
            line=element.sourceline,
        )
    try:
        return spec._fast_bind(element)  # type: ignore[return-value]
    except (Unusual, ValueError, ArithmeticError, LookupError):
        # not in the shape to_xml writes, or a value that does not load: the general binder
        # reads what it can and names what is wrong
        return _bind(spec, element, "/" + spec.tag)  # type: ignore[return-value]


def _invalid(
    spec: PayloadShape, schema: etree.XMLSchema, element: etree._Element
) -> SchemaViolation:
    """The rejection of an element ``schema`` just failed: its first error, line and path,
    said in the payload's terms where libxml2's words would mislead."""
    if element.tag != spec.tag:
        return SchemaViolation(
            f"expected the payload <{spec.tag}>, got <{element.tag}>",
            line=element.sourceline,
            path="/",
        )
    err = schema.error_log[0]  # the first error: later ones often follow from it
    message = f"<{spec.tag}> does not conform to its schema: {err.message}"
    if "This element is not expected" in err.message:
        holder = _spec_at(spec, (err.path or "").split("/")[2:-1])
        if holder is not None:
            order = ", ".join(f.name for f in holder.fields)
            message += (
                f" (child elements of <{holder.tag}> come in the order of its fields: {order})"
            )
    return SchemaViolation(message, line=err.line or None, path=err.path or None)


def _spec_at(spec: PayloadShape, names: list[str]) -> PayloadShape | None:
    """The nested spec at an element path below the root (``["ship_to"]``), if there is one."""
    for name in names:
        field = spec.by_tag.get(name.partition("[")[0])
        if field is None or field.nested is None:
            return None
        spec = field.nested
    return spec


def _bind(spec: PayloadShape, el: etree._Element, path: str) -> object:
    # the general binder, for elements `_fast_bind` leaves to it: one lookup per element,
    # element paths built only for nested elements and errors
    values: dict[str, Any] = {}
    binders = spec._binders
    for child in el:
        binder = binders.get(child.tag)
        if binder is None:
            tag = child.tag
            if not isinstance(tag, str):
                continue  # comments and processing instructions carry no data
            raise SchemaViolation(f"unknown element <{tag}>", line=child.sourceline, path=path)
        name, nested, load, repeated, f = binder
        if nested is not None:
            value = _bind(nested, child, f"{path}/{name}")
        else:
            text = child.text if len(child) == 0 else _scalar_text(child, path)
            if load is None:
                value = text or ""  # a str field: lxml's text is the value
            else:
                try:
                    value = load(text or "")
                except (ValueError, ArithmeticError) as exc:
                    raise SchemaViolation(
                        f"{_show(text)} is not a valid {f.codec.name}: {exc}",  # type: ignore[union-attr]
                        line=child.sourceline,
                        path=f"{path}/{name}",
                    ) from None
        if repeated:
            items = values.get(name)
            if items is None:
                values[name] = [value]
            else:
                items.append(value)
        elif name in values:
            raise SchemaViolation(
                f"<{name}> appears twice", line=child.sourceline, path=f"{path}/{name}"
            )
        else:
            values[name] = value
    if len(values) != len(spec.fields):
        for f in spec.fields:
            if f.name in values:
                continue
            # to_xml writes an empty list and None as no element, so that is what reads back
            if f.repeated:
                values[f.name] = []
            elif f.optional:
                values[f.name] = None
            elif not f.has_default:
                raise SchemaViolation(f"missing element <{f.name}>", line=el.sourceline, path=path)
    return spec.cls(**values)


def _scalar_text(el: etree._Element, path: str) -> str:
    """The text of a value element that holds comments or PIs (a tree not from parse_guarded).

    Raises:
        SchemaViolation: the element holds an element, where a value was expected.
    """
    parts = [el.text or ""]
    for sub in el:
        if isinstance(sub.tag, str):
            raise SchemaViolation(
                f"<{el.tag}> holds a value, not elements; found <{sub.tag}>",
                line=sub.sourceline,
                path=f"{path}/{el.tag}",
            )
        parts.append(sub.tail or "")
    return "".join(parts)
