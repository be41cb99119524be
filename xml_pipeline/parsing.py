"""The guarded parser for XML that comes from outside the process.

Checks run cheapest first: the size cap before parsing, a DOCTYPE scan before parsing, then a
parser that resolves no entities, loads no DTD, touches no network or file, never recovers,
and stops at libxml2's own depth and text-node limits; element count and depth are counted
afterwards only when the input is large enough to break them (an element takes at least 4
bytes, a level of nesting at least 7), so small envelopes pay nothing for those caps.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

from lxml import etree

from xml_pipeline.errors import XmlInputError

__all__ = ["DEFAULT_MAX_BYTES", "ParseLimits", "parse_guarded"]

DEFAULT_MAX_BYTES = 256 * 1024


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


def _parser() -> etree.XMLParser:
    # lxml parsers may not be used by two threads at once; one per thread, reused.
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            recover=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
        _local.parser = parser
    return parser


def parse_guarded(data: bytes | str, limits: ParseLimits | None = None) -> etree._Element:
    """Parse untrusted XML into an element tree, or reject it with a reason code.

    Raises:
        XmlInputError: with reason ``too_large``, ``doctype``, ``malformed``, ``too_deep`` or
            ``too_many_elements``, and the line where the problem was found when known.
    """
    lim = limits or _DEFAULT_LIMITS
    if isinstance(data, str):
        data = data.encode()
    if len(data) > lim.max_bytes:
        raise XmlInputError(
            f"input is {len(data):,} bytes, over the {lim.max_bytes:,}-byte cap; send less, or "
            "raise organism.max_message_bytes",
            reason="too_large",
        )
    at = data.find(b"<!DOCTYPE")
    if at >= 0:
        raise _doctype(data.count(b"\n", 0, at) + 1)
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise _syntax(exc) from None
    if root.getroottree().docinfo.doctype:
        raise _doctype(1)  # a DOCTYPE the byte scan could not see (another encoding)
    if len(data) >= 4 * lim.max_elements:
        count = sum(1 for _ in itertools.islice(root.iter(), lim.max_elements + 1))
        if count > lim.max_elements:
            raise XmlInputError(
                f"more than {lim.max_elements:,} elements in one document",
                reason="too_many_elements",
            )
    if len(data) >= 7 * lim.max_depth + 4:
        _check_depth(root, lim.max_depth)
    return root


def _check_depth(root: etree._Element, max_depth: int) -> None:
    depth = 0
    for event, element in etree.iterwalk(root, events=("start", "end")):
        depth += 1 if event == "start" else -1
        if depth > max_depth:
            raise XmlInputError(
                f"elements nested deeper than {max_depth} levels",
                reason="too_deep",
                line=element.sourceline,
            )


def _doctype(line: int) -> XmlInputError:
    return XmlInputError(
        "DOCTYPE declarations are not accepted (no DTDs, no entities); remove it",
        reason="doctype",
        line=line,
    )


def _syntax(exc: etree.XMLSyntaxError) -> XmlInputError:
    msg = str(exc.msg or exc)
    line = exc.lineno or None
    if "Excessive depth" in msg:
        return XmlInputError("elements nested too deep", reason="too_deep", line=line)
    if "too long" in msg or "huge" in msg.lower():
        return XmlInputError(f"a text node is too large ({msg})", reason="too_large", line=line)
    return XmlInputError(f"not well-formed XML: {msg}", reason="malformed", line=line)
