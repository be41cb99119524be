"""History entries: the cached head with a meta.call scope filled in is byte for byte the
envelope head built from scratch, for any sender, receiver and scope, and reads back."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from xml_pipeline import payload, to_xml
from xml_pipeline._runtime.registry import new_thread_id
from xml_pipeline._wire.envelope import envelope_head
from xml_pipeline._wire.history import decode_entry, encode_entry
from xml_pipeline._wire.parsing import parse_guarded


@payload
@dataclass
class Note:
    text: str


# what XML 1.0 can carry, markup characters included (the head must escape them)
XML_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\ufffe\uffff").filter(
        lambda c: c in "\t\n\r" or ord(c) >= 0x20
    ),
    min_size=1,
    max_size=12,
).filter(lambda t: t.strip() == t)
SCOPES = st.one_of(
    st.lists(st.builds(new_thread_id), min_size=1, max_size=3).map(" ".join),  # the pump's
    XML_TEXT,  # anything else takes the escaping path
)


@settings(max_examples=200)
@given(XML_TEXT, XML_TEXT, SCOPES, XML_TEXT)
def test_an_entry_under_a_scope_is_the_head_built_from_scratch(
    sender: str, to: str, scope: str, text: str
) -> None:
    data = to_xml(Note(text=text))
    expected_head = envelope_head(sender, to, scope)
    for _ in range(2):  # the first builds the (sender, to) head; the second reads it cached
        entry = encode_entry(sender, to, data, scope)
        assert entry.startswith(expected_head)
        parse_guarded(entry)  # well-formed
        back = decode_entry(entry)
        assert (back.sender, back.to, back.payload_tag) == (sender, to, "Note")
