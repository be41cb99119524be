"""Conversation history entries: one per hop, stored by the backend as envelope bytes.

An entry is the hop's v1 envelope, so what a backend holds is plain XML anyone can read (no
pickle). Reading an entry back goes through the guarded parser like any other bytes that left
the process.

Thread ids are not history: an entry's ``<thread>`` is empty, except for a hop made under a
``meta.call``, whose entry names the call (and the calls around it) it happened under: its
*scope*, thread ids separated by spaces. When an attempt that made such calls fails and is
rolled back, the pump appends a *rollback entry* (from ``_rollback``) naming those calls; every
entry in their scope is then dropped when history is read (`current_entries`): the retry starts
from the conversation as it was, and a rolled-back call never reads as current. Nothing is
deleted from the backend: the hop records (and `Organism.trace`) keep every attempt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from xml_pipeline._wire.envelope import Envelope, envelope_head
from xml_pipeline._wire.parsing import ParseLimits

__all__ = [
    "ROLLBACK_SENDER",
    "HistoryEntry",
    "current_entries",
    "decode_entry",
    "encode_entry",
    "rollback_entry",
]

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
_CLOSE_THREAD = b"</thread></meta>"
_OPEN_THREAD = -len(b"<thread>" + _CLOSE_THREAD)  # where a cached head's empty thread starts


# The sender of a rollback entry: reserved (a leading "_"), so no listener or outside sender
# can write one.
ROLLBACK_SENDER = "_rollback"
_ROLLBACK_HEAD = envelope_head(ROLLBACK_SENDER, "", "").split(b"<to>", 1)[0]
_THREAD = re.compile(rb"<thread>([^<]*)</thread>")  # the first one is the head's (escaped text)


def encode_entry(sender: str, to: str, payload_xml: bytes, scope: str = "") -> bytes:
    """The stored form of one hop, around its payload as `to_xml` wrote it.

    ``scope``: the thread ids of the ``meta.call``s the hop happened under, separated by spaces
    (empty for a hop under none, the usual case).

    Raises:
        SchemaViolation: ``sender`` or ``to`` holds a character XML cannot carry.
    """
    head = _HEADS.get((sender, to))
    if head is None:
        head = envelope_head(sender, to, "")
        if len(_HEADS) < _MOST_HEADS:
            _HEADS[sender, to] = head
    if scope:  # every hop under a meta.call: the cached head, its thread filled in
        if scope.isascii() and scope.replace(" ", "").isalnum():  # thread ids: nothing to escape
            head = b"".join((head[:_OPEN_THREAD], b"<thread>", scope.encode(), _CLOSE_THREAD))
        else:
            head = envelope_head(sender, to, scope)
    end = payload_xml.index(b">")  # to_xml writes the root start tag bare: xmlns="" goes in it
    return b"".join((head, payload_xml[:end], b' xmlns=""', payload_xml[end:], b"</message>"))


def rollback_entry(listener: str, calls: Iterable[str]) -> bytes:
    """The entry saying that the ``meta.call``s with thread ids ``calls``, made by a failed
    attempt of ``listener``, were rolled back: every entry in their scope is no longer current.
    """
    head = envelope_head(ROLLBACK_SENDER, listener, " ".join(calls))
    return head + b'<RolledBack xmlns=""/></message>'


def current_entries(stored: list[bytes]) -> list[bytes]:
    """The stored entries that are current, oldest first: rollback entries, and the entries of
    the calls they name (and of everything under those calls), left out.

    Costs one prefix test per entry when nothing was rolled back (the usual case).
    """
    rolled: set[bytes] = set()
    for entry in stored:
        if entry.startswith(_ROLLBACK_HEAD):
            rolled.update(_scope(entry))
    if not rolled:
        return stored
    return [
        entry
        for entry in stored
        if not entry.startswith(_ROLLBACK_HEAD) and rolled.isdisjoint(_scope(entry))
    ]


def _scope(entry: bytes) -> list[bytes]:
    found = _THREAD.search(entry)
    return found.group(1).split() if found is not None else []


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
