"""XML documents one after another in a stream of lines (envelopes in a file, say).

`DocumentSplitter` is fed lines and hands back each complete document with the line it starts
on, so that a file of envelopes written over several lines each can be answered envelope by
envelope. A document ends on the line where its root element ends (nothing may follow it on
that line). lxml's incremental parser tells where that is; it resolves no entity and loads no
DTD or network resource (the document is parsed again, guarded, by whoever takes it), and a
document over ``ParseLimits.max_bytes`` is dropped as soon as it is, without being kept.

A document that cannot be read (malformed, too large, not closed before the next envelope
starts or the input ends) is handed back as an `XmlInputError` with its start line; reading
goes on at the next line that starts an envelope (``<message`` or ``<?xml`` after optional
spaces), so one broken envelope costs only itself.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

from lxml import etree

from xml_pipeline._errors import XmlInputError
from xml_pipeline._wire.envelope import ENVELOPE_NS
from xml_pipeline._wire.parsing import ParseLimits

__all__ = ["DocumentSplitter", "Framed"]

_ENVELOPE = f"{{{ENVELOPE_NS}}}message"
# where reading starts again after a broken document: a line that opens an envelope
_RESTART = re.compile(rb"^\s*<(\?xml[\s?]|([A-Za-z_][\w.-]*:)?message[\s>/])")
_LOCATION = re.compile(r", line \d+, column \d+$")
_LINE = re.compile(r"\bline (\d+)")


@dataclass(frozen=True, slots=True)
class Framed:
    """One document of the stream, or why the one starting at ``line`` could not be read.

    Attributes:
        line: the line (1-based) where the document's root element starts (where it starts,
            when that was never reached).
        data: the document's bytes (``None`` with ``error``).
        error: what is wrong with it, with the line in the stream where that was found.
        first: the line ``data`` starts on (before ``line`` when comments or a declaration
            come first): line N of ``data`` is line ``first + N - 1`` of the stream.
    """

    line: int
    data: bytes | None = None
    error: XmlInputError | None = None
    first: int = 0

    def __post_init__(self) -> None:
        if not self.first:
            object.__setattr__(self, "first", self.line)


class _Document:
    """The document being read: its lines so far and its parser's depth."""

    __slots__ = ("depth", "lines", "parser", "root", "size", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.lines: list[bytes] = []
        self.size = 0
        self.depth = 0
        self.root = 0  # the line its root element starts on, once it did
        self.parser = etree.XMLPullParser(
            events=("start", "end"),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            huge_tree=False,
        )

    def feed(self, line: bytes) -> int | None:
        """Parse one more line; the line (relative) where another envelope starts inside
        this document, if one does.

        Raises:
            etree.XMLSyntaxError: the document is malformed.
        """
        self.lines.append(line)
        self.size += len(line)
        self.parser.feed(line)
        return self._events()

    def close(self) -> None:
        """The input ended.

        Raises:
            etree.XMLSyntaxError: the document is malformed or incomplete.
        """
        self.parser.close()
        self._events()

    @property
    def line(self) -> int:
        """Where the document starts, for people: its root element's line once seen."""
        return self.root or self.start

    @property
    def complete(self) -> bool:
        return self.root > 0 and self.depth == 0

    def _events(self) -> int | None:
        for action, element in self.parser.read_events():
            if action == "end":
                self.depth -= 1
                continue
            self.depth += 1
            if self.depth == 1:
                self.root = self.start + int(element.sourceline or 1) - 1
            elif element.tag == _ENVELOPE:
                return int(element.sourceline or 1)
        return None


class DocumentSplitter:
    """Cuts a stream of lines into XML documents; feed it lines, then `close` it."""

    def __init__(self, limits: ParseLimits | None = None) -> None:
        self._max_bytes = (limits or ParseLimits()).max_bytes
        self._lineno = 0
        self._doc: _Document | None = None
        self._skipping = False  # after a broken document: until a line that starts one

    def feed(self, line: bytes) -> list[Framed]:
        """Take the next line (with its line break, if any).

        Returns:
            the documents (and the errors of broken ones) that end on this line.
        """
        self._lineno += 1
        doc = self._doc
        if doc is None:
            if not line.strip() or (self._skipping and not _RESTART.match(line)):
                return []
            doc = self._doc = _Document(self._lineno)
            self._skipping = False
        if doc.size + len(line) > self._max_bytes:
            return [self._broken(
                f"the document starting at line {doc.line} is over the "
                f"{self._max_bytes:,}-byte cap; send less, or raise organism.max_message_bytes",
                self._lineno, reason="too_large",
            )]  # fmt: skip
        try:
            nested = doc.feed(line)
        except etree.XMLSyntaxError as exc:
            return [self._malformed(exc)]
        if nested is None:
            if not doc.complete:
                return []
            self._doc = None
            return [Framed(doc.root, b"".join(doc.lines), first=doc.start)]
        # an envelope starts inside this one, which was therefore never closed
        at = doc.start + nested - 1
        broken = self._broken(
            f"the document starting at line {doc.line} is not closed before line {at}, "
            "where another envelope starts; close its root element",
            at,
        )
        if at <= doc.root:  # on its root element's own line: nothing to start again from
            return [broken]
        framed = [broken]
        self._lineno = at - 1
        for again in doc.lines[nested - 1 :]:
            framed.extend(self.feed(again))
        return framed

    def close(self) -> list[Framed]:
        """The end of the input: the document still open, if any.

        Returns:
            at most one `Framed`: the last document, when only the end of input completes
            it (no line break after it), or the error of one that is not complete.
        """
        doc = self._doc
        if doc is None:
            return []
        with contextlib.suppress(etree.XMLSyntaxError):  # then it is not complete
            doc.close()
        if doc.complete:
            self._doc = None
            return [Framed(doc.root, b"".join(doc.lines), first=doc.start)]
        return [self._broken(
            f"the document starting at line {doc.line} is not complete at the end of the "
            "input; close its root element",
            self._lineno,
        )]  # fmt: skip

    def _malformed(self, exc: etree.XMLSyntaxError) -> Framed:
        doc = self._doc
        assert doc is not None
        # lxml counts lines from the document's start: count them in the stream instead
        message = _LOCATION.sub("", exc.msg or str(exc))
        message = _LINE.sub(lambda m: f"line {doc.start + int(m[1]) - 1}", message)
        return self._broken(
            f"the document starting at line {doc.line} is malformed: {message}",
            doc.start + (exc.lineno or 1) - 1,
        )

    def _broken(self, message: str, line: int, reason: str = "malformed") -> Framed:
        doc = self._doc
        assert doc is not None
        self._doc = None
        self._skipping = True
        error = XmlInputError(message, reason=reason, line=line)
        return Framed(doc.line, error=error, first=doc.start)
