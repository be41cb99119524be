"""Repair of XML written by LLMs: code fences, chatter, stray ``&`` and ``<``, unclosed tags.

Repair is opt-in: the pipeline never applies it to envelopes by itself. A caller that receives
XML from a model calls :func:`repair`, logs ``result.changes`` and parses ``result.text``.

What comes out is well-formed for the guarded parser (`xml_pipeline._wire.parsing.parse_guarded`):
besides the structure, repair knows what that parser refuses in text a model may write —
characters and character references XML cannot carry, ``]]>`` in text, ``--`` in comments,
a DOCTYPE, an XML declaration anywhere but at the start, names that are not XML names,
undeclared namespace prefixes, duplicate attributes, namespace declarations XML refuses — and
changes each, saying so. Whatever it cannot make a document of (text with no element) raises.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

from xml_pipeline._errors import XmlInputError

__all__ = ["Repair", "RepairResult", "repair"]

_WS = " \t\r\n"  # what XML calls whitespace: str.strip() strips far more (U+00A0, U+2003...)
_S = "[ \t\r\n]"
# XML 1.0 5th edition names without the colon (what libxml2's parser reads), then QNames
_NAME_START = (
    "A-Z_a-z\xc0-\xd6\xd8-\xf6\xf8-\u02ff\u0370-\u037d\u037f-\u1fff\u200c\u200d"
    "\u2070-\u218f\u2c00-\u2fef\u3001-\ud7ff\uf900-\ufdcf\ufdf0-\ufffd\U00010000-\U000effff"
)
_NCNAME = rf"[{_NAME_START}][{_NAME_START}\-.0-9\xb7\u0300-\u036f\u203f\u2040]*"
_QNAME = rf"{_NCNAME}(?::{_NCNAME})?"
_START_TAG = re.compile(rf"<({_QNAME})")
_ATTRIBUTE = re.compile(
    rf"{_S}+({_QNAME}){_S}*={_S}*(?:\"([^\"]*)\"|'([^']*)'|([^ \t\r\n\"'<>]+?)(?={_S}|/?>))"
)
_TAG_END = re.compile(rf"{_S}*(/?)>")
_END_TAG = re.compile(rf"</({_QNAME}){_S}*>")
_PI = re.compile(rf"<\?({_NCNAME})(?={_S}|\?>)")
_DECLARATION = re.compile(
    rf"<\?xml{_S}+version{_S}*={_S}*(\"|')1\.[0-9]+\1"
    rf"(?:{_S}+encoding{_S}*={_S}*(\"|')[A-Za-z][A-Za-z0-9._\-]*\2)?"
    rf"(?:{_S}+standalone{_S}*={_S}*(\"|')(?:yes|no)\3)?{_S}*\?>"
)
_DOCTYPE = re.compile(rf"<!DOCTYPE{_S}[^\[>]*(?:\[[^\]]*\])?{_S}*>")
_INVALID_CHAR = "[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
_BAD_CHAR = re.compile(_INVALID_CHAR)
# in text: a reference, a bare '&', '<', the ']]>' that only ends CDATA, a character XML refuses
_TEXT_FIX = re.compile(
    rf"&(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);|&|<|\]\]>|{_INVALID_CHAR}"
)
_FENCE = re.compile(r"^[ \t]*```[\w+.-]*", re.MULTILINE)  # opens at a line start
_MISC = frozenset({"comment", "pi", "end"})  # may follow the root element (stray ends: dropped)
_XML_NS = "http://www.w3.org/XML/1998/namespace"
_GUARDED = "<!DOCTYPE"  # parse_guarded refuses these bytes anywhere, CDATA and comments too


@dataclass(frozen=True, slots=True)
class Repair:
    """One change :func:`repair` made.

    ``kind`` is a stable code: ``code_fence``, ``leading_text``, ``trailing_text``,
    ``escaped_ampersand`` (also for a reference to a character XML cannot carry),
    ``escaped_lt``, ``escaped_gt`` (of a ``]]>`` in text), ``replaced_char`` (a character XML
    cannot carry, replaced with U+FFFD), ``quoted_attribute``, ``dropped_attribute`` (a
    duplicate, or a namespace declaration XML refuses), ``dropped_prefix`` (an undeclared
    namespace prefix), ``closed_tag``, ``dropped_stray_close_tag``, ``closed_comment``,
    ``dropped_comment`` (holding ``--``, ending with ``-``, or holding ``<!DOCTYPE``, which
    the guarded parser refuses anywhere), ``closed_cdata``, ``unwrapped_cdata`` (a CDATA
    section holding ``<!DOCTYPE``, written as escaped text), ``dropped_doctype``,
    ``dropped_declaration`` (an XML declaration not at the start, or malformed) or
    ``dropped_pi`` (named ``xml`` in another case, or holding ``<!DOCTYPE``).
    ``detail`` says what and where (line and column in the input, tag name) for people.
    """

    kind: str
    detail: str


@dataclass(frozen=True, slots=True)
class RepairResult:
    """The repaired text and every change made to get it, in input order."""

    text: str
    changes: tuple[Repair, ...]

    @property
    def changed(self) -> bool:
        """True when repair changed anything, that is when ``changes`` is not empty."""
        return bool(self.changes)


@dataclass(frozen=True, slots=True)
class _Attribute:
    start: int  # of the whitespace before the name
    name_start: int
    name: str
    value_start: int
    value_end: int
    unquoted: bool


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # start, empty, end, comment, cdata, pi, doctype
    start: int
    end: int
    name: str = ""
    attributes: tuple[_Attribute, ...] = ()
    missing: str = ""  # terminator added because the input ended first


@dataclass(frozen=True, slots=True)
class _Open:
    """An element opened and not closed yet."""

    name: str  # as written, what its end tag names
    written: str  # as output (an undeclared prefix dropped)
    start: int
    scope: dict[str, str]  # namespace prefixes in scope inside it -> their URI text


class _Repairer:
    def __init__(self, text: str, root: str | None) -> None:
        self.text = text
        self.root = root
        self.out: list[str] = []
        self.changes: list[Repair] = []
        self.stack: list[_Open] = []
        self.root_done = False
        self.root_seen = False
        self._line_starts = [0, *(m.end() for m in re.finditer("\n", text))]
        # (terminator, end) -> (where it was found or -1, where the search began)
        self._found: dict[tuple[str, int], tuple[int, int]] = {}

    def note(self, kind: str, what: str, pos: int) -> None:
        line = bisect_right(self._line_starts, pos)
        column = pos - self._line_starts[line - 1] + 1
        self.changes.append(Repair(kind, f"{what} at line {line}, column {column}"))

    def drop(self, kind: str, start: int, end: int) -> None:
        chunk = self.text[start:end]
        if chunk.strip(_WS):
            preview = " ".join(chunk.split()) or chunk.strip(_WS)
            preview = preview if len(preview) <= 40 else preview[:37] + "..."
            self.note(kind, f"dropped {preview!r}", start + len(chunk) - len(chunk.lstrip(_WS)))

    def run(self, start: int, end: int) -> str:
        text, chunk, pos = self.text, start, start
        while True:
            lt = text.find("<", pos, end)
            token = None if lt < 0 else self._parse(lt, end)
            if lt >= 0 and (token is None or self._is_chatter(token)):
                pos = lt + 1  # a stray '<' is part of the surrounding text
                continue
            stop = end if token is None else token.start
            if self.root_done and (
                text[chunk:stop].strip(_WS) or (token and token.kind not in _MISC)
            ):
                self.drop("trailing_text", chunk, end)
                break
            self._text(chunk, stop)
            if token is None:
                break
            self._emit(token)
            chunk = pos = token.end
        while self.stack:
            self._close_innermost("at the end of the input")
        return "".join(self.out)

    def _parse(self, i: int, end: int) -> _Token | None:
        text = self.text
        for kind, opener, closer in (("comment", "<!--", "-->"), ("cdata", "<![CDATA[", "]]>")):
            if text.startswith(opener, i, end):
                j = self._find(closer, i + len(opener), end)
                if j < 0:
                    return _Token(kind, i, end, missing=closer)
                return _Token(kind, i, j + len(closer))
        if (m := _PI.match(text, i, end)) and (j := self._find("?>", m.end(), end)) >= 0:
            return _Token("pi", i, j + 2, name=m[1])
        if m := _DOCTYPE.match(text, i, end):
            return _Token("doctype", i, m.end())
        if m := _END_TAG.match(text, i, end):
            return _Token("end", i, m.end(), name=m[1])
        if (m := _START_TAG.match(text, i, end)) is None:
            return None
        pos, attributes = m.end(), []
        while a := _ATTRIBUTE.match(text, pos, end):
            group = next(g for g in (2, 3, 4) if a.start(g) >= 0)
            attributes.append(
                _Attribute(a.start(), a.start(1), a[1], a.start(group), a.end(group), group == 4)
            )
            pos = a.end()
        if (close := _TAG_END.match(text, pos, end)) is None:
            return None
        kind = "empty" if close[1] else "start"
        return _Token(kind, i, close.end(), name=m[1], attributes=tuple(attributes))

    def _find(self, terminator: str, start: int, end: int) -> int:
        """``text.find(terminator, start, end)``, reusing the last search for it when that
        one began at or before ``start`` and found nothing or something at or after it.

        Scans only move forward, so an unterminated ``<?x`` repeated 40,000 times costs one
        search instead of one per ``<`` (which made repair quadratic).
        """
        known = self._found.get((terminator, end))
        if known is not None:
            at, began = known
            if began <= start and (at < 0 or at >= start):
                return at
        at = self.text.find(terminator, start, end)
        self._found[(terminator, end)] = (at, start)
        return at

    def _is_chatter(self, token: _Token) -> bool:
        """Whether markup is really prose: before the root, or a DOCTYPE inside it."""
        if self.stack:
            return token.kind == "doctype"
        if self.root_done:
            return False
        if token.kind in ("end", "cdata"):
            return True
        return token.kind in ("start", "empty") and self.root not in (None, token.name)

    def _text(self, start: int, end: int) -> None:
        if self.stack:
            self.out.append(self._escape(start, end, in_text=True))
        elif self.text[start:end].strip(_WS):
            self.drop("leading_text", start, end)
        else:
            self.out.append(self.text[start:end])

    def _escape(self, start: int, end: int, *, in_text: bool, noted: bool = True) -> str:
        """Text or an attribute value with what XML refuses there changed, each change noted
        (unless ``noted`` is False: for a value looked at before it is written)."""
        note = self.note if noted else _ignore

        def replace(m: re.Match[str]) -> str:
            found, at = m[0], start + m.start()
            if found == "&":
                note("escaped_ampersand", "escaped '&' as '&amp;'", at)
                return "&amp;"
            if found == "<":
                note("escaped_lt", "escaped '<' as '&lt;'", at)
                return "&lt;"
            if found == "]]>":
                if not in_text:
                    return found
                note("escaped_gt", "escaped '>' of ']]>' as '&gt;'", at)
                return "]]&gt;"
            if found.startswith("&#"):
                if _reference_ok(found):
                    return found
                note(
                    "escaped_ampersand",
                    f"escaped '&' of {found[:20]!r}, a reference to a character XML cannot "
                    "carry, as '&amp;'",
                    at,
                )
                return "&amp;" + found[1:]
            if found.startswith("&"):
                return found  # one of the five predefined entities
            return self._replace_char(found, at, note)

        return _TEXT_FIX.sub(replace, self.text[start:end])

    def _replace_char(self, char: str, at: int, note: Callable[[str, str, int], None]) -> str:
        what = f"replaced U+{ord(char):04X}, a character XML cannot carry, with U+FFFD"
        note("replaced_char", what, at)
        return "\ufffd"

    def _copy(self, start: int, end: int) -> str:
        """Markup copied as is but for characters XML cannot carry."""
        text = self.text[start:end]
        return _BAD_CHAR.sub(lambda m: self._replace_char(m[0], start + m.start(), self.note), text)

    def _emit(self, token: _Token) -> None:
        if token.kind == "end":
            self._close(token)
        elif token.kind in ("start", "empty"):
            self._emit_start(token)
        elif token.kind == "doctype":
            self.note("dropped_doctype", "dropped a DOCTYPE (never accepted)", token.start)
        elif token.kind == "pi":
            self._emit_pi(token)
        elif token.kind == "comment" and (why := self._bad_comment(token)):
            self.note("dropped_comment", f"dropped a comment {why}", token.start)
        elif token.kind == "cdata" and _GUARDED in self.text[token.start + 9 : token.end]:
            # CDATA is text: the same text, escaped, without the marker the parser refuses
            what = f"wrote a CDATA section holding {_GUARDED!r} (refused anywhere) as text"
            self.note("unwrapped_cdata", what, token.start)
            body_end = token.end if token.missing else token.end - 3
            self.out.append(self._escape(token.start + 9, body_end, in_text=True))
        else:
            self.out.append(self._copy(token.start, token.end) + token.missing)
            if token.missing:
                label = "comment" if token.kind == "comment" else "CDATA section"
                what = f"added {token.missing!r} to the {label} opened"
                self.note(f"closed_{token.kind}", what, token.start)

    def _bad_comment(self, token: _Token) -> str:
        """Why XML or the guarded parser refuses a comment, or "" when they take it."""
        body_end = token.end if token.missing else token.end - 3
        body = self.text[token.start + 4 : body_end]
        if "--" in body or body.endswith("-"):
            return "holding '--' or ending with '-' (XML refuses both)"
        if _GUARDED in body:
            return f"holding {_GUARDED!r} (the guarded parser refuses it anywhere)"
        return ""

    def _emit_pi(self, token: _Token) -> None:
        target = token.name
        if target == "xml":
            at_start = not "".join(self.out) and not self.stack and not self.root_done
            if at_start and _DECLARATION.fullmatch(self.text, token.start, token.end):
                self.out.append(self.text[token.start : token.end])
            else:
                what = "dropped an XML declaration that is malformed or not at the start"
                self.note("dropped_declaration", what, token.start)
        elif target.lower() == "xml":
            what = f"dropped a processing instruction named {target!r} (reserved by XML)"
            self.note("dropped_pi", what, token.start)
        elif _GUARDED in self.text[token.start : token.end]:
            what = f"dropped a processing instruction holding {_GUARDED!r} (refused anywhere)"
            self.note("dropped_pi", what, token.start)
        else:
            self.out.append(self._copy(token.start, token.end))

    def _emit_start(self, token: _Token) -> None:
        text = self.text
        scope = self.stack[-1].scope if self.stack else {"xml": _XML_NS}
        dropped: set[int] = set()
        renamed: dict[int, str] = {}
        values = [
            self._escape(a.value_start, a.value_end, in_text=False, noted=False)
            for a in token.attributes
        ]
        declared: dict[str, str] = {}
        for i, a in enumerate(token.attributes):
            if a.name != "xmlns" and not a.name.startswith("xmlns:"):
                continue
            prefix = a.name.partition(":")[2]
            if prefix in declared or not _declaration_ok(a.name, values[i]):
                why = "declared twice" if prefix in declared else "a declaration XML refuses"
                self.note("dropped_attribute", f"dropped {a.name} ({why})", a.name_start)
                dropped.add(i)
            else:
                declared[prefix] = _unescape(values[i])
        inner = {**scope, **{p: uri for p, uri in declared.items() if p}}
        written = self._unprefixed(token.name, inner, token.start)
        seen: set[tuple[str, str]] = set()
        for i, a in enumerate(token.attributes):
            if i in dropped or a.name == "xmlns" or a.name.startswith("xmlns:"):
                continue
            name = self._unprefixed(a.name, inner, a.name_start)
            prefix, _, local = name.rpartition(":")
            key = (inner[prefix], local) if prefix else ("", name)
            if name == "xmlns" or key in seen:
                why = "it would declare a namespace" if name == "xmlns" else "a duplicate"
                self.note("dropped_attribute", f"dropped {a.name} ({why})", a.name_start)
                dropped.add(i)
                continue
            seen.add(key)
            if name != a.name:
                renamed[i] = name
        parts, cursor = ["<", written], token.start + 1 + len(token.name)
        for i, a in enumerate(token.attributes):
            parts.append(text[cursor : a.start])
            cursor = a.value_end + (0 if a.unquoted else 1)
            if i in dropped:
                continue
            if a.unquoted:
                raw = text[a.value_start : a.value_end]
                self.note("quoted_attribute", f"quoted {raw!r} in <{token.name}>", a.value_start)
            value = self._escape(a.value_start, a.value_end, in_text=False)  # noted in order
            value = f'"{value}"' if a.unquoted else value
            quote = "" if a.unquoted else text[a.value_start - 1]
            parts += [
                text[a.start : a.name_start],
                renamed.get(i, a.name),
                text[a.name_start + len(a.name) : a.value_start - len(quote)],
                quote,
                value,
                quote,
            ]
        parts.append(text[cursor : token.end])
        self.out.append("".join(parts))
        self.root_seen = True
        if token.kind == "start":
            self.stack.append(_Open(token.name, written, token.start, inner))
        elif not self.stack:
            self.root_done = True

    def _unprefixed(self, name: str, scope: dict[str, str], at: int) -> str:
        """``name`` without its prefix when that prefix is not declared, the change noted."""
        prefix, _, local = name.rpartition(":")
        if not prefix or prefix in scope:
            return name
        what = f"dropped the undeclared namespace prefix {prefix + ':'!r} of {name!r}"
        self.note("dropped_prefix", what, at)
        return local

    def _close(self, token: _Token) -> None:
        if token.name not in (open_.name for open_ in self.stack):
            what = f"dropped </{token.name}>, which closes no open element,"
            self.note("dropped_stray_close_tag", what, token.start)
            return
        while self.stack[-1].name != token.name:
            self._close_innermost(f"before </{token.name}>")
        closed = self.stack.pop()
        if closed.written == closed.name:
            self.out.append(self.text[token.start : token.end])
        else:  # its start tag lost an undeclared prefix (noted there)
            self.out.append(f"</{closed.written}>")
        self.root_done = not self.stack

    def _close_innermost(self, when: str) -> None:
        open_ = self.stack.pop()
        self.out.append(f"</{open_.written}>")
        what = f"added </{open_.written}> {when} for the <{open_.name}> opened"
        self.note("closed_tag", what, open_.start)
        self.root_done = not self.stack


def _ignore(kind: str, what: str, pos: int) -> None:
    """A `_Repairer.note` that notes nothing."""


def _reference_ok(reference: str) -> bool:
    """Whether a character reference (``&#65;``, ``&#x41;``) names a character XML carries."""
    digits = reference[3:-1] if reference[2] == "x" else reference[2:-1]
    digits = digits.lstrip("0") or "0"
    if len(digits) > 8:  # past U+10FFFF in any base, and short of int()'s digit limit
        return False
    code = int(digits, 16 if reference[2] == "x" else 10)
    return _BAD_CHAR.fullmatch(chr(code)) is None if code <= 0x10FFFF else False


_PREDEFINED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _unescape(value: str) -> str:
    """An attribute value as the parser reads it (for comparing namespace URIs)."""

    def one(m: re.Match[str]) -> str:
        ref = m[1]
        if ref.startswith("#"):
            return chr(int(ref[2:], 16) if ref[1] == "x" else int(ref[1:]))
        return _PREDEFINED[ref]

    return re.sub(r"&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);", one, value)


@functools.lru_cache(maxsize=256)
def _declaration_ok(name: str, value: str) -> bool:
    """Whether libxml2 takes ``name="value"`` as a namespace declaration (the rules for
    ``xml``, ``xmlns``, empty and relative URIs are its own: ask it)."""
    try:
        etree.fromstring(f'<r {name}="{value.replace(chr(34), "&quot;")}"/>', _DECLARATION_PARSER)
    except etree.XMLSyntaxError:
        return False
    return True


_DECLARATION_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def _find_fence(text: str, element: re.Pattern[str]) -> tuple[int, int, int, int] | None:
    """Offsets (fence start, content start, content end, fence end) of the first fenced XML."""
    pos = 0
    while (m := _FENCE.search(text, pos)) is not None:
        close = text.find("```", m.end())
        content_end = len(text) if close < 0 else close
        if element.search(text, m.end(), content_end):
            return m.start(), m.end(), content_end, len(text) if close < 0 else close + 3
        if close < 0:
            return None
        pos = close + 3
    return None


def repair(text: str, *, root: str | None = None) -> RepairResult:
    """Repair XML written by an LLM, and say what was changed.

    Use it on model output before parsing, never on envelopes from peers: it guesses. It strips
    a ```` ```xml ```` fence and the prose around the outermost element, escapes ``&`` that
    starts no entity (or refers to a character XML cannot carry), ``<`` that starts no markup
    and the ``>`` of a ``]]>`` in text, replaces characters XML cannot carry with U+FFFD, quotes
    unquoted attribute values, drops duplicate attributes, undeclared namespace prefixes,
    namespace declarations XML refuses, close tags that close no open element, comments
    holding ``--``, a DOCTYPE and a misplaced XML declaration, and closes unclosed elements,
    comments and CDATA sections. XML the guarded parser accepts comes back unchanged.

    Args:
        text: the model's answer.
        root: the expected root element name. When given, markup before ``<root`` is prose
            too (helpful when the prose itself holds tags). Ignored when ``<root`` is absent.

    Returns:
        The repaired text, which `parse_guarded` parses (within its size and depth caps), and
        the changes made, in input order (fence and leading prose first, trailing prose
        last). ``result.changed`` is False when nothing was changed.

    Raises:
        XmlInputError: reason ``malformed``, the text holds no element to make a document of
            (prose only); ask the model again.
    """
    if root and not re.search(rf"<{re.escape(root)}(?={_S}|/|>)", text):
        root = None
    element = re.compile(rf"<{re.escape(root) if root else _QNAME}(?={_S}|/|>)")
    repairer = _Repairer(text, root)
    start, end, after = 0, len(text), len(text)  # after: where the text after a fence starts
    # Text that starts like a document is one: a ``` in it is content, not a fence.
    fence = None if text.lstrip(_WS).startswith("<") else _find_fence(text, element)
    if fence is not None:
        fence_start, start, end, after = fence
        repairer.drop("leading_text", 0, fence_start)
        repairer.note("code_fence", "removed the code fence opened", fence_start)
        content = text[start:end]  # the whitespace next to the fences goes with them
        start = start + len(content) - len(content.lstrip(_WS))
        end = start + len(content.strip(_WS))
    body = repairer.run(start, end)
    repairer.drop("trailing_text", after, len(text))
    if not repairer.root_seen:
        raise XmlInputError(
            f"no XML element in the text ({len(text):,} characters of prose): nothing to "
            "repair; ask the model again for the XML",
            reason="malformed",
        )
    return RepairResult(body, tuple(repairer.changes))
