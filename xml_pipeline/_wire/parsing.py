"""The guarded parser for XML that comes from outside the process.

Checks run cheapest first: the size cap, then a scan of the bytes for a DOCTYPE, then a parser
that resolves no entities, loads no DTD, never recovers, stops at libxml2's own depth and
text-node limits, and refuses every external resource through a resolver (libxml2 still
fetches an external DTD or parameter entity without ``load_dtd``, and the byte scan cannot see a
DOCTYPE written in UTF-7). Element count and depth are checked after parsing only when counting
``<`` in the bytes says the document could break a cap, so small envelopes pay nothing for
those caps.

Input that libxml2 reads as UTF-8 (no byte order mark but UTF-8's, no other declared encoding)
is *plain*: scanning its bytes is scanning its text. Other input is also scanned for a DOCTYPE
in the encodings that are not ASCII-compatible, checked for one after parsing, and has its caps
bounded by its length instead of its tags.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from lxml import etree

from xml_pipeline._errors import XmlInputError
from xml_pipeline._settings import OrganismSettings, defaults

__all__ = ["DEFAULT_MAX_BYTES", "ParseLimits", "parse_guarded", "parse_internal"]

# the default of the organism's max_message_bytes, read where it is written (not again here)
DEFAULT_MAX_BYTES: int = defaults(OrganismSettings)["max_message_bytes"]


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """Caps applied to XML from outside.

    Attributes:
        max_bytes: inputs larger than this are rejected before parsing (``too_large``).
        max_depth: deepest element nesting allowed (``too_deep``); libxml2 stops at 256 anyway.
        max_elements: most elements in one document (``too_many_elements``).
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    max_depth: int = 64
    max_elements: int = 10_000


_DEFAULT_LIMITS = ParseLimits()
_local = threading.local()

# "<!DOCTYPE" in the encodings an XML document may use that are not ASCII-compatible
_DOCTYPE_SPELLINGS = tuple(
    "<!DOCTYPE".encode(enc)
    for enc in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "cp037", "cp500")
)
_ASCII_STARTS = frozenset(b"<\xef \t\r\n")  # '<', whitespace, or the UTF-8 byte order mark
_DECLARED_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]*)""")
_UTF8_NAMES = frozenset((b"utf-8", b"utf8", b"us-ascii", b"ascii"))
_DECLARED_ENCODING_TEXT = re.compile(r"""(encoding\s*=\s*["'])[A-Za-z0-9._-]*(["'])""")


class _ExternalLoadRefused(Exception):
    """Raised inside the parser when the document asks for an external resource."""


class _RefuseExternal(etree.Resolver):  # type: ignore[misc]
    def resolve(self, system_url: str, public_id: str, context: object) -> None:
        raise _ExternalLoadRefused(system_url)


def _parser(*, internal: bool = False) -> etree.XMLParser:
    """This thread's parser (lxml parsers may not be shared between threads): one per thread
    and kind, reused. Neither kind resolves entities, loads a DTD or reaches the network; the
    internal one (XML this organism wrote itself) allows huge documents and keeps comments."""
    name = "internal_parser" if internal else "parser"
    parser: etree.XMLParser | None = getattr(_local, name, None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=internal,
            recover=False,
            remove_comments=not internal,
            remove_pis=not internal,
            collect_ids=False,
        )
        if not internal:
            parser.resolvers.add(_RefuseExternal())
        setattr(_local, name, parser)
    return parser


def parse_guarded(data: bytes | str, limits: ParseLimits | None = None) -> etree._Element:
    """Parse untrusted XML into an element tree, or reject it with a reason code.

    Raises:
        XmlInputError: with reason ``too_large``, ``doctype``, ``malformed``, ``too_deep`` or
            ``too_many_elements``, and the line where the problem was found when known.
    """
    lim = limits or _DEFAULT_LIMITS
    if isinstance(data, str):
        data = _str_to_bytes(data)
    if len(data) > lim.max_bytes:
        raise XmlInputError(
            f"input is {len(data):,} bytes, over the {lim.max_bytes:,}-byte cap; send less, or "
            "raise organism.max_message_bytes",
            reason="too_large",
        )
    at = data.find(b"<!DOCTYPE")
    if at >= 0:
        raise _doctype(data.count(b"\n", 0, at) + 1)
    # the usual envelope starts "<m": UTF-8 without a declaration, no need to look further
    plain = (data.startswith(b"<") and not data.startswith((b"<?", b"<\x00"))) or _is_plain(data)
    if not plain and any(d in data for d in _DOCTYPE_SPELLINGS):
        raise _doctype(None)
    try:
        root = etree.fromstring(data, _parser())
    except _ExternalLoadRefused:
        raise _doctype(None) from None
    except etree.XMLSyntaxError as exc:
        raise _syntax(exc) from None
    if plain:
        # every element has a start tag; every level of nesting but the innermost an end tag
        most_elements = data.count(b"<")
        most_depth = (most_elements + 1) // 2
    else:
        if root.getroottree().docinfo.doctype:
            raise _doctype(None)  # in an encoding the byte scans do not know
        # in any encoding an element takes 4 bytes or more, a level of nesting 7 or more
        most_elements, most_depth = len(data) // 4, (len(data) + 3) // 7
    if most_elements > lim.max_elements and _count_elements(root) > lim.max_elements:
        raise XmlInputError(
            f"more than {lim.max_elements:,} elements in one document",
            reason="too_many_elements",
        )
    if most_depth > lim.max_depth:
        _check_depth(root, lim.max_depth)
    return root


def _str_to_bytes(text: str) -> bytes:
    """UTF-8 bytes of already decoded XML, with any declared encoding changed to match.

    Raises:
        XmlInputError: ``malformed``, the text holds a lone surrogate.
    """
    if text.startswith("<?xml"):
        end = text.find("?>")
        if end > 0:
            declaration = _DECLARED_ENCODING_TEXT.sub(r"\1UTF-8\2", text[:end], count=1)
            text = declaration + text[end:]
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: not text XML can carry
        raise XmlInputError(
            f"not well-formed XML: U+{ord(text[exc.start]):04X} at offset {exc.start} is not a "
            "character",
            reason="malformed",
            line=text.count("\n", 0, exc.start) + 1,
        ) from None


def _is_plain(data: bytes) -> bool:
    """Whether libxml2 reads ``data`` as UTF-8, so that its markup is ASCII bytes."""
    if not data or data[0] not in _ASCII_STARTS or 0 in data[:4]:
        return False  # UTF-16, UTF-32, EBCDIC... (or junk the parser will reject)
    if not data.startswith((b"<?xml", b"\xef\xbb\xbf<?xml")):
        return True
    end = data.find(b"?>", 0, 256)
    m = _DECLARED_ENCODING.search(data, 0, end if end > 0 else 256)
    return m is None or m.group(1).lower() in _UTF8_NAMES


def _count_elements(root: etree._Element) -> int:
    count: float = root.xpath("count(//*)")
    return int(count)


def _check_depth(root: etree._Element, max_depth: int) -> None:
    probes: dict[int, etree.XPath] = _local.__dict__.setdefault("depth_probes", {})
    probe = probes.get(max_depth)
    if probe is None:
        # the first element at depth max_depth + 1: "/*" selects the root element, "/*/*" its
        # children...; compiled once per thread, like the parser
        probe = probes[max_depth] = etree.XPath("(" + "/*" * (max_depth + 1) + ")[1]")
    found = probe(root)
    if found:
        raise XmlInputError(
            f"elements nested deeper than {max_depth} levels",
            reason="too_deep",
            line=found[0].sourceline,
        )


def _doctype(line: int | None) -> XmlInputError:
    return XmlInputError(
        "DOCTYPE declarations are not accepted (no DTDs, no entities); remove it",
        reason="doctype",
        line=line,
    )


def _syntax(exc: etree.XMLSyntaxError) -> XmlInputError:
    msg = str(exc.msg or exc)
    line = exc.lineno or None
    if "entity amplification" in msg or "entity reference loop" in msg:
        # only a DOCTYPE declares entities: one in an encoding the byte scans do not know
        return _doctype(line)
    if "Excessive depth" in msg:
        return XmlInputError("elements nested too deep", reason="too_deep", line=line)
    if "too long" in msg or "huge" in msg.lower():
        return XmlInputError(f"a text node is too large ({msg})", reason="too_large", line=line)
    return XmlInputError(f"not well-formed XML: {msg}", reason="malformed", line=line)


def parse_internal(data: bytes) -> etree._Element:
    """Parse XML this organism wrote itself with `to_xml` (never XML from outside).

    No caps for outside input apply (an inline handler's objects have none either), and the
    parser allows what libxml2 calls huge documents (text nodes over 10 MB, nesting past 256);
    it still resolves no entities and loads nothing.

    Raises:
        XmlInputError: ``malformed``, the bytes are not XML.
    """
    try:
        return etree.fromstring(data, _parser(internal=True))
    except etree.XMLSyntaxError as exc:
        raise _syntax(exc) from None
