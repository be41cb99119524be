"""Cutting a stream of lines into XML documents, each with the line it starts on."""

from __future__ import annotations

from xml_pipeline import Envelope, ParseLimits
from xml_pipeline._wire.framing import DocumentSplitter, Framed

NS = "https://xml-pipeline.org/ns/envelope/v1"


def envelope(name: str, *, lines: bool = True) -> str:
    parts = [
        f'<message xmlns="{NS}">',
        "  <meta><to>greeter</to></meta>",
        f'  <Greeting xmlns=""><name>{name}</name></Greeting>',
        "</message>",
    ]
    return "\n".join(parts) + "\n" if lines else "".join(p.strip() for p in parts) + "\n"


def split(text: str, limits: ParseLimits | None = None) -> list[Framed]:
    splitter = DocumentSplitter(limits)
    framed: list[Framed] = []
    for line in text.encode().splitlines(keepends=True):
        framed.extend(splitter.feed(line))
    return framed + splitter.close()


def names(framed: list[Framed]) -> list[tuple[int, str]]:
    """(start line, greeting name or the error's reason) of each document."""
    out: list[tuple[int, str]] = []
    for item in framed:
        if item.error is not None:
            out.append((item.line, f"error {item.error.reason}"))
        else:
            assert item.data is not None
            env = Envelope.from_bytes(item.data)
            out.append((item.line, str(env.payload.findtext("name"))))  # type: ignore[attr-defined]
    return out


def test_multi_line_and_one_line_documents_each_with_their_start_line() -> None:
    text = "\n" + envelope("Ada") + envelope("Bob", lines=False) + "\n\n" + envelope("Cy")
    assert names(split(text)) == [(2, "Ada"), (6, "Bob"), (9, "Cy")]


def test_a_document_is_tagged_with_the_line_of_its_root_element() -> None:
    framed = split("<!-- the first one:\n  Ada -->\n" + envelope("Ada"))
    assert names(framed) == [(3, "Ada")]
    assert framed[0].first == 1, "its data starts with the comment"


def test_the_last_document_may_end_without_a_line_break() -> None:
    assert names(split(envelope("Ada").rstrip("\n"))) == [(1, "Ada")]


def test_a_malformed_document_costs_only_itself_with_its_line_in_the_stream() -> None:
    broken = envelope("Bob").replace("</name>", "</nam>")
    framed = split(envelope("Ada") + broken + envelope("Cy"))
    assert names(framed) == [(1, "Ada"), (5, "error malformed"), (9, "Cy")]
    error = framed[1].error
    assert error is not None and error.line == 7
    # lxml's own line numbers are rewritten to count in the stream, not in the document
    assert "starting at line 5" in error.message and "line 7" in error.message
    assert "line 3" not in error.message


def test_an_envelope_left_open_ends_where_the_next_envelope_starts() -> None:
    unclosed = envelope("Bob").replace("</message>\n", "")
    framed = split(envelope("Ada") + unclosed + envelope("Cy"))
    assert names(framed) == [(1, "Ada"), (5, "error malformed"), (8, "Cy")]
    error = framed[1].error
    assert error is not None and "not closed before line 8" in error.message


def test_an_incomplete_document_at_the_end_of_the_input_is_reported() -> None:
    framed = split(envelope("Ada") + "<message>\n  <meta>\n")
    assert names(framed) == [(1, "Ada"), (5, "error malformed")]
    error = framed[1].error
    assert error is not None and "not complete at the end of the input" in error.message


def test_a_document_over_the_size_cap_is_dropped_as_soon_as_it_is() -> None:
    big = envelope("x" * 500)
    framed = split(big + envelope("Cy"), ParseLimits(max_bytes=200))
    assert names(framed) == [(1, "error too_large"), (5, "Cy")]


def test_entities_are_not_expanded_while_cutting() -> None:
    """The cutter resolves nothing: the guarded parser that reads the document refuses DTDs."""
    laughs = (
        '<!DOCTYPE m [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>\n'
        f'<message xmlns="{NS}"><meta><to>g</to></meta><X xmlns="">&b;</X></message>\n'
    )
    framed = split(laughs + envelope("Cy"))
    assert (framed[0].first, framed[0].line) == (1, 2) and framed[0].data is not None
    assert len(framed[0].data) == len(laughs.encode())
    assert names(framed[1:]) == [(3, "Cy")]
