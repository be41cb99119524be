"""The shape of a payload class: its tag, its fields and how each travels as XML.

Data only: `xml_pipeline._wire.payloads` builds shapes from dataclasses (and fills in the
generated functions from `codegen`), `xsd` derives documents from them. Neither of those is
imported here, so the three never form an import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from xml_pipeline._wire.codecs import Codec

__all__ = ["Binder", "FieldSpec", "PayloadShape", "Walker"]

# what `_check` and `_write` need per field, unpacked in one step: (name, optional, repeated,
# nested spec, scalar check, scalar writer, field)
Walker = tuple[
    str,
    bool,
    bool,
    "PayloadShape | None",
    "Callable[[Any], bool] | None",
    "Callable[[Any], str] | None",
    "FieldSpec",
]
# what `_bind` needs per element, in one lookup: (field name, nested spec, scalar loader (None
# for nested and str fields), repeated, field)
Binder = tuple[str, "PayloadShape | None", "Callable[[str], Any] | None", bool, "FieldSpec"]


@dataclass(frozen=True, slots=True, eq=False)
class FieldSpec:
    """How one dataclass field travels as XML.

    Exactly one of ``codec`` (a scalar) and ``nested`` (a dataclass) is set.
    """

    name: str
    codec: Codec | None
    nested: PayloadShape | None
    optional: bool
    repeated: bool
    has_default: bool
    type_text: str


@dataclass(eq=False)
class PayloadShape:
    """The shape of one payload (or nested) dataclass: its tag and fields, and the lookups and
    generated functions the writer, checker and binders use (filled in by `payloads`)."""

    cls: type
    tag: str
    fields: tuple[FieldSpec, ...]
    doc: str
    by_tag: dict[str, FieldSpec] = dataclasses.field(default_factory=dict)
    _schema: etree.XMLSchema | None = None
    _xsd: str | None = None
    _binders: dict[str, Binder] = dataclasses.field(default_factory=dict, repr=False)
    _walkers: tuple[Walker, ...] = dataclasses.field(default=(), repr=False)
    _fast_bind: Callable[[etree._Element], object] = dataclasses.field(init=False, repr=False)
    _fast_write: Callable[[object], str] = dataclasses.field(init=False, repr=False)
    _fast_check: Callable[[object], None] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.by_tag = {f.name: f for f in self.fields}
        self._walkers = tuple(
            (
                f.name,
                f.optional,
                f.repeated,
                f.nested,
                None if f.codec is None else f.codec.accepts,
                None if f.codec is None else f.codec.dump,
                f,
            )
            for f in self.fields
        )
        self._binders = {
            f.name: (
                f.name,
                f.nested,
                None if f.codec is None or f.codec.load is str else f.codec.load,
                f.repeated,
                f,
            )
            for f in self.fields
        }
