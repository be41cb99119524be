"""Repair of XML written by LLMs: code fences, chatter, stray ``&`` and ``<``, unclosed tags.

Repair is opt-in: the pipeline never applies it to envelopes by itself. A caller that receives
XML from a model calls :func:`repair`, logs ``result.changes`` and parses ``result.text``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["Repair", "RepairResult", "repair"]

_NAME = r"(?:[^\W\d]|:)[\w.:\-]*"
_START_TAG = re.compile(rf"<({_NAME})")
_ATTRIBUTE = re.compile(rf"\s+{_NAME}\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s\"'<>]+?)(?=\s|/?>))")
_TAG_END = re.compile(r"\s*(/?)>")
_END_TAG = re.compile(rf"</({_NAME})\s*>")
_PI = re.compile(rf"<\?{_NAME}")
_DOCTYPE = re.compile(r"<!DOCTYPE\s[^\[>]*(?:\[[^\]]*\])?\s*>")
_STRAY = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);)|<")
_FENCE = re.compile(r"^[ \t]*```[\w+.-]*", re.MULTILINE)  # opens at a line start
_MISC = frozenset({"comment", "pi", "end"})  # may follow the root element (stray ends: dropped)


@dataclass(frozen=True, slots=True)
class Repair:
    """One change :func:`repair` made.

    ``kind`` is a stable code: ``code_fence``, ``leading_text``, ``trailing_text``,
    ``escaped_ampersand``, ``escaped_lt``, ``quoted_attribute``, ``closed_tag``,
    ``dropped_stray_close_tag``, ``closed_comment`` or ``closed_cdata``. ``detail`` says what
    and where (line and column in the input, tag name) for people.
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
class _Token:
    kind: str  # start, empty, end, comment, cdata, pi, doctype
    start: int
    end: int
    name: str = ""
    values: tuple[tuple[int, int, bool], ...] = ()  # attribute value spans; True: unquoted
    missing: str = ""  # terminator added because the input ended first


class _Repairer:
    def __init__(self, text: str, root: str | None) -> None:
        self.text = text
        self.root = root
        self.out: list[str] = []
        self.changes: list[Repair] = []
        self.stack: list[tuple[str, int]] = []  # open elements: name, offset of the start tag
        self.root_done = False
        self._line_starts = [0, *(m.end() for m in re.finditer("\n", text))]
        # (terminator, end) -> (where it was found or -1, where the search began)
        self._found: dict[tuple[str, int], tuple[int, int]] = {}

    def note(self, kind: str, what: str, pos: int) -> None:
        line = bisect_right(self._line_starts, pos)
        column = pos - self._line_starts[line - 1] + 1
        self.changes.append(Repair(kind, f"{what} at line {line}, column {column}"))

    def drop(self, kind: str, start: int, end: int) -> None:
        chunk = self.text[start:end]
        if chunk.strip():
            preview = " ".join(chunk.split())
            preview = preview if len(preview) <= 40 else preview[:37] + "..."
            self.note(kind, f"dropped {preview!r}", start + len(chunk) - len(chunk.lstrip()))

    def run(self, start: int, end: int) -> str:
        text, chunk, pos = self.text, start, start
        while True:
            lt = text.find("<", pos, end)
            token = None if lt < 0 else self._parse(lt, end)
            if lt >= 0 and (token is None or self._is_chatter(token)):
                pos = lt + 1  # a stray '<' is part of the surrounding text
                continue
            stop = end if token is None else token.start
            if self.root_done and (text[chunk:stop].strip() or (token and token.kind not in _MISC)):
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
            return _Token("pi", i, j + 2)
        if m := _DOCTYPE.match(text, i, end):
            return _Token("doctype", i, m.end())
        if m := _END_TAG.match(text, i, end):
            return _Token("end", i, m.end(), name=m[1])
        if (m := _START_TAG.match(text, i, end)) is None:
            return None
        pos, values = m.end(), []
        while a := _ATTRIBUTE.match(text, pos, end):
            group = next(g for g in (1, 2, 3) if a.start(g) >= 0)
            values.append((a.start(group), a.end(group), group == 3))
            pos = a.end()
        if (close := _TAG_END.match(text, pos, end)) is None:
            return None
        kind = "empty" if close[1] else "start"
        return _Token(kind, i, close.end(), name=m[1], values=tuple(values))

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
            self.out.append(self._escape(start, end))
        elif self.text[start:end].strip():
            self.drop("leading_text", start, end)
        else:
            self.out.append(self.text[start:end])

    def _escape(self, start: int, end: int) -> str:
        def replace(m: re.Match[str]) -> str:
            if m[0] == "&":
                self.note("escaped_ampersand", "escaped '&' as '&amp;'", start + m.start())
                return "&amp;"
            self.note("escaped_lt", "escaped '<' as '&lt;'", start + m.start())
            return "&lt;"

        return _STRAY.sub(replace, self.text[start:end])

    def _emit(self, token: _Token) -> None:
        if token.kind == "end":
            self._close(token)
            return
        if token.kind not in ("start", "empty"):
            self.out.append(self.text[token.start : token.end] + token.missing)
            if token.missing:
                label = "comment" if token.kind == "comment" else "CDATA section"
                what = f"added {token.missing!r} to the {label} opened"
                self.note(f"closed_{token.kind}", what, token.start)
            return
        cursor = token.start
        for value_start, value_end, unquoted in token.values:
            if unquoted:
                raw = self.text[value_start:value_end]
                self.note("quoted_attribute", f"quoted {raw!r} in <{token.name}>", value_start)
            value = self._escape(value_start, value_end)
            value = f'"{value}"' if unquoted else value
            self.out += [self.text[cursor:value_start], value]
            cursor = value_end
        self.out.append(self.text[cursor : token.end])
        if token.kind == "start":
            self.stack.append((token.name, token.start))
        elif not self.stack:
            self.root_done = True

    def _close(self, token: _Token) -> None:
        if token.name not in (name for name, _ in self.stack):
            what = f"dropped </{token.name}>, which closes no open element,"
            self.note("dropped_stray_close_tag", what, token.start)
            return
        while self.stack[-1][0] != token.name:
            self._close_innermost(f"before </{token.name}>")
        self.stack.pop()
        self.out.append(self.text[token.start : token.end])
        self.root_done = not self.stack

    def _close_innermost(self, when: str) -> None:
        name, opened = self.stack.pop()
        self.out.append(f"</{name}>")
        self.note("closed_tag", f"added </{name}> {when} for the <{name}> opened", opened)
        self.root_done = not self.stack


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
    starts no entity and ``<`` that starts no markup (in text and attribute values), quotes
    unquoted attribute values, drops close tags that close no open element, and closes
    unclosed elements, comments and CDATA sections. Well-formed XML comes back unchanged.

    Args:
        text: the model's answer.
        root: the expected root element name. When given, markup before ``<root`` is prose
            too (helpful when the prose itself holds tags). Ignored when ``<root`` is absent.

    Returns:
        The repaired text and the changes made, in input order (fence and leading prose
        first, trailing prose last). ``result.changed`` is False when nothing was changed.

    Raises:
        Nothing: any text gets a result. Text holding no element loses all its prose, so
        the result is usually empty.
    """
    if root and not re.search(rf"<{re.escape(root)}(?=[\s/>])", text):
        root = None
    element = re.compile(rf"<{re.escape(root) if root else _NAME}(?=[\s/>])")
    repairer = _Repairer(text, root)
    start, end, after = 0, len(text), len(text)  # after: where the text after a fence starts
    # Text that starts like a document is one: a ``` in it is content, not a fence.
    fence = None if text.lstrip().startswith("<") else _find_fence(text, element)
    if fence is not None:
        fence_start, start, end, after = fence
        repairer.drop("leading_text", 0, fence_start)
        repairer.note("code_fence", "removed the code fence opened", fence_start)
        content = text[start:end]  # the whitespace next to the fences goes with them
        start, end = start + len(content) - len(content.lstrip()), start + len(content.rstrip())
    body = repairer.run(start, end)
    repairer.drop("trailing_text", after, len(text))
    return RepairResult(body, tuple(repairer.changes))
