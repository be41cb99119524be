"""Conversation history entries: one per hop, stored by the backend as envelope bytes.

An entry is the hop's v1 envelope with an empty thread (thread ids are not history), so what
a backend holds is plain XML anyone can read (no pickle). Reading an entry back goes through
the guarded parser like any other bytes that left the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lxml import etree

from xml_pipeline._wire.envelope import Envelope, envelope_head
from xml_pipeline._wire.parsing import ParseLimits

__all__ = ["HistoryEntry", "decode_entry", "encode_entry"]

# Entries were written by a pump from checked payloads: the caps for input from outside (an
# organism may raise max_message_bytes) do not apply; libxml2's own depth limit still does.
_STORED = ParseLimits(max_bytes=1 << 31, max_depth=255, max_elements=1 << 31)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded hop of a conversation: who sent what to whom.

    ``payload`` is the payload's XML (bytes), as stored by the backend.
    """

    sender: str
    to: str
    payload_tag: str
    payload: bytes


# An entry's head depends only on (sender, to), a handful of listener pairs: each is escaped once.
_HEADS: dict[tuple[str, str], bytes] = {}
_MOST_HEADS = 4096  # outside senders vary: past this many, heads are built each time


def encode_entry(sender: str, to: str, payload_xml: bytes) -> bytes:
    """The stored form of one hop, around its payload as `to_xml` wrote it.

    Raises:
        SchemaViolation: ``sender`` or ``to`` holds a character XML cannot carry.
    """
    head = _HEADS.get((sender, to))
    if head is None:
        head = envelope_head(sender, to, "")
        if len(_HEADS) < _MOST_HEADS:
            _HEADS[sender, to] = head
    end = payload_xml.index(b">")  # to_xml writes the root start tag bare: xmlns="" goes in it
    return b"".join((head, payload_xml[:end], b' xmlns=""', payload_xml[end:], b"</message>"))


def decode_entry(data: bytes) -> HistoryEntry:
    """Read a stored hop back.

    Raises:
        XmlInputError: the stored bytes are not an envelope (the backend was tampered with).
    """
    env = Envelope.from_bytes(data, _STORED)
    element: Any = env.payload
    # UTF-8 like to_xml: lxml's default, ASCII, writes a name such as Café as "Caf&#233;",
    # which no parser reads back
    body: bytes = etree.tostring(element, encoding="UTF-8", with_tail=False)
    return HistoryEntry(env.sender, env.to, str(element.tag), body.replace(b' xmlns=""', b"", 1))
