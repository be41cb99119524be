"""The rules of the `Backend` protocol, written once: a synchronous state core and checks.

`StateCore` holds the semantics of the protocol as plain synchronous methods with no I/O:
`MemoryBackend` calls it directly from the event loop (each call runs to completion without an
``await``, so it is atomic), and the manager server calls it under a lock
(`xml_pipeline.backends.manager`). The Redis scripts implement the same rules in Lua; the
contract suite (tests/backends/test_contract.py) holds all three to them.

Expiry is lazy. Records and conversations sit in insertion-ordered dicts that are re-ordered on
every touch, so with one TTL the expired entries gather at the front: an expired entry counts as
unknown wherever it is looked up, and a few front entries are evicted on every ``extend`` (so
nothing accumulates without a sweeper); ``sweep()`` evicts every expired entry at once.
Every touch of a record also touches its conversation, so a conversation never expires before
its records do, and evicting an expired conversation evicts its records with it.

Dead letters never expire: they are kept in the order they came, bounded by the number of
entries each append names, with ids in the form Redis gives stream entries (``<ms>-<seq>``),
so that every backend sorts, bounds and filters them alike (`letter_matches`, `since_ms`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any

from xml_pipeline._settings import BackendConfig, build
from xml_pipeline.backends.base import (
    TOMBSTONE_SECONDS,
    DeadLetter,
    DeadLetterCounts,
    PruneResult,
    RunSnapshot,
    ThreadRecord,
)

__all__ = [
    "DEFAULTS",
    "StateCore",
    "check_settings",
    "id_in_use",
    "letter_id_key",
    "letter_matches",
    "since_ms",
]

DEFAULTS = BackendConfig()  # the defaults every backend's constructor takes

# Expired entries are evicted from the front every _EVICT_EVERY extends, up to _EVICT_BATCH at
# a time: more than the entries those extends add (one each), so the expired backlog shrinks
# under any load; in batches, because the check itself costs as much as an eviction.
_EVICT_EVERY = 16
# builds a record straight from its fields: a named tuple's own constructor is a Python lambda
# that costs twice as much, and extend and prune make one per hop
_new = tuple.__new__
_EVICT_BATCH = 2 * _EVICT_EVERY
# Commands queued for one process between two of its heartbeats; beyond it they are dropped
# (a process that stopped taking them is forgotten soon anyway).
_MAX_COMMANDS = 1000


class _Record:
    __slots__ = ("conversation", "deadline", "listener", "parent")

    def __init__(self, parent: str, listener: str, conversation: str, deadline: float) -> None:
        self.parent = parent
        self.listener = listener
        self.conversation = conversation
        self.deadline = deadline


class _Conversation:
    __slots__ = ("deadline", "history", "threads")

    def __init__(self, deadline: float) -> None:
        self.threads: set[str] = set()
        self.history: deque[bytes] = deque()
        self.deadline = deadline


class StateCore:
    """Thread records and histories in dicts; the single written form of the backend rules.

    Settings (``ttl`` in seconds, ``max_entries``) are passed per call, as the Redis scripts
    receive them, so that clients of one shared state each apply their own configuration.
    Methods raise `ValueError` for a thread id that is already in use under another parent.
    """

    def __init__(self) -> None:
        self._roots: dict[str, str] = {}
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()
        self._tombstones: OrderedDict[str, float] = OrderedDict()  # abandoned id -> until
        self._until_eviction = _EVICT_EVERY
        self._letters: OrderedDict[str, DeadLetter] = OrderedDict()  # id -> letter, oldest first
        self._letters_dropped = 0
        self._last_letter = (0, -1)  # (ms, seq) of the newest id given
        # the run registry: process -> [written at, forget at, snapshot, commands]
        self._runs: dict[str, list[Any]] = {}

    # -- the run registry ---------------------------------------------------------------------

    def put_runs(self, process: str, snapshot: bytes, forget_after: float) -> list[bytes]:
        now = time.monotonic()
        self._forget_runs(now)
        entry = self._runs.get(process)
        if entry is None:
            self._runs[process] = [now, now + forget_after, snapshot, []]
            return []
        commands: list[bytes] = entry[3]
        entry[:] = [now, now + forget_after, snapshot, []]
        return commands

    def run_snapshots(self) -> list[RunSnapshot]:
        now = time.monotonic()
        self._forget_runs(now)
        return [
            RunSnapshot(process, max(0.0, now - entry[0]), entry[2])
            for process, entry in self._runs.items()
        ]

    def push_run_command(self, process: str, command: bytes) -> bool:
        self._forget_runs(time.monotonic())
        entry = self._runs.get(process)
        if entry is None:
            return False
        if len(entry[3]) < _MAX_COMMANDS:
            entry[3].append(command)
        return True

    def delete_runs(self, process: str) -> None:
        self._runs.pop(process, None)

    def _forget_runs(self, now: float) -> None:
        for process in [p for p, entry in self._runs.items() if entry[1] <= now]:
            del self._runs[process]

    # -- the protocol -------------------------------------------------------------------------

    def put_root(self, thread_id: str, name: str) -> None:
        self._roots.setdefault(thread_id, name)

    def extend(
        self,
        parent_id: str,
        child_id: str,
        listener: str,
        history_entry: bytes | None,
        ttl: float,
        max_entries: int,
    ) -> ThreadRecord | None:
        # one call per hop: the helpers' work is written out here (a method call costs as much
        # as the dict operation it wraps)
        now = time.monotonic()
        self._until_eviction -= 1
        if self._until_eviction <= 0:
            self._until_eviction = _EVICT_EVERY
            self._evict_front(now, _EVICT_BATCH)
        records = self._records
        parent = records.get(parent_id)
        if parent is not None:
            if parent.deadline < now:  # expired: unknown
                self._remove_record(parent_id, parent)
                return None
            conversation = parent.conversation
        elif parent_id in self._roots:
            tombstone = self._tombstones.get(child_id)
            if tombstone is not None:
                if tombstone >= now:
                    return None  # abandoned while this call was on its way: create nothing
                del self._tombstones[child_id]
            conversation = child_id
        else:
            return None
        existing = records.get(child_id)
        if existing is not None and existing.deadline < now:
            self._remove_record(child_id, existing)
            existing = None
        if existing is not None or child_id in self._roots:
            if existing is not None and existing.parent == parent_id:
                # A retried call that already succeeded: same answer, no second history entry.
                return ThreadRecord(child_id, parent_id, existing.listener, existing.conversation)
            raise id_in_use(child_id)
        deadline = now + ttl
        if parent is not None:
            parent.deadline = deadline
            records.move_to_end(parent_id)
        records[child_id] = _Record(parent_id, listener, conversation, deadline)
        conv = self._touch_conversation(conversation, deadline)
        conv.threads.add(child_id)
        if history_entry is not None:
            history = conv.history
            history.append(history_entry)
            while len(history) > max_entries:  # once, unless clients' limits differ
                history.popleft()
        return _new(ThreadRecord, (child_id, parent_id, listener, conversation))

    def prune(
        self, thread_id: str, history_entry: bytes | None, ttl: float, max_entries: int
    ) -> PruneResult | None:
        now = time.monotonic()
        records = self._records
        record = records.get(thread_id)
        if record is None:
            return None
        del records[thread_id]
        conversation = record.conversation
        conv = self._conversations.get(conversation)
        if conv is not None:
            conv.threads.discard(thread_id)
        if record.deadline < now:  # it had expired: unknown
            return None
        parent_id = record.parent
        caller = self._roots.get(parent_id)
        if caller is not None:
            self.retire_conversation(conversation)
            return _new(PruneResult, (caller, parent_id, conversation, True))
        parent = records.get(parent_id)
        if parent is None:
            return None
        if parent.deadline < now:
            self._remove_record(parent_id, parent)
            return None
        deadline = now + ttl
        parent.deadline = deadline
        records.move_to_end(parent_id)
        conv = self._touch_conversation(conversation, deadline)
        if history_entry is not None:
            history = conv.history
            history.append(history_entry)
            while len(history) > max_entries:  # once, unless clients' limits differ
                history.popleft()
        return _new(PruneResult, (parent.listener, parent_id, conversation, False))

    def get(self, thread_id: str, ttl: float) -> ThreadRecord | None:
        name = self._roots.get(thread_id)
        if name is not None:
            return ThreadRecord(thread_id, None, name, None)
        now = time.monotonic()
        record = self._live_record(thread_id, now)
        if record is None:
            return None
        deadline = now + ttl
        self._touch_record(thread_id, record, deadline)
        self._touch_conversation(record.conversation, deadline)
        return ThreadRecord(thread_id, record.parent, record.listener, record.conversation)

    def chain(self, thread_id: str) -> list[str] | None:
        now = time.monotonic()
        names: list[str] = []
        current = thread_id
        while (root_name := self._roots.get(current)) is None:
            record = self._records.get(current)
            if record is None or record.deadline < now:
                return None
            names.append(record.listener)
            current = record.parent
        names.append(root_name)
        names.reverse()
        return names

    def retire_conversation(self, conversation: str) -> int:
        conv = self._conversations.pop(conversation, None)
        if conv is None:
            return 0
        removed = 0
        for thread_id in conv.threads:
            if self._records.pop(thread_id, None) is not None:
                removed += 1
        return removed

    def abandon(self, conversation: str) -> int:
        self._tombstones[conversation] = time.monotonic() + TOMBSTONE_SECONDS
        self._tombstones.move_to_end(conversation)
        return self.retire_conversation(conversation)

    def count(self) -> int:
        self.sweep()
        return len(self._roots) + len(self._records)

    def history(self, conversation: str) -> list[bytes]:
        conv = self._conversations.get(conversation)
        if conv is None:
            return []
        if conv.deadline < time.monotonic():
            self.retire_conversation(conversation)
            return []
        return list(conv.history)

    def sweep(self) -> int:
        """Evict every expired record and conversation; returns the records evicted."""
        return self._evict_front(time.monotonic(), None)

    # -- dead letters -------------------------------------------------------------------------

    def add_dead_letters(self, letters: Sequence[DeadLetter], max_entries: int) -> list[DeadLetter]:
        kept_letters = self._letters
        kept: list[DeadLetter] = []
        for letter in letters:
            ms = int(time.time() * 1000)
            last_ms, last_seq = self._last_letter
            # as Redis does: ids never go back, even when the clock does
            seq = last_seq + 1 if ms <= last_ms else 0
            ms = max(ms, last_ms)
            self._last_letter = (ms, seq)
            entry = dataclasses.replace(letter, id=f"{ms}-{seq}", time=ms / 1000)
            kept_letters[entry.id] = entry
            kept.append(entry)
        while len(kept_letters) > max_entries:
            kept_letters.popitem(last=False)
            self._letters_dropped += 1
        return kept

    def dead_letters(
        self, reason: str | None, listener: str | None, since: float | None, limit: int | None
    ) -> list[DeadLetter]:
        low = since_ms(since)
        found: list[DeadLetter] = []
        for letter_id, letter in self._letters.items():
            if limit is not None and len(found) >= limit:
                break
            if low and letter_id_key(letter_id)[0] < low:
                continue
            if letter_matches(letter, reason, listener):
                found.append(letter)
        return found

    def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        return self._letters.get(letter_id)

    def delete_dead_letters(self, letter_ids: Sequence[str]) -> int:
        letters = self._letters
        return sum(letters.pop(letter_id, None) is not None for letter_id in letter_ids)

    def dead_letter_counts(self) -> DeadLetterCounts:
        return DeadLetterCounts(len(self._letters), self._letters_dropped)

    # -- internals ----------------------------------------------------------------------------

    def _live_record(self, thread_id: str, now: float) -> _Record | None:
        record = self._records.get(thread_id)
        if record is not None and record.deadline < now:
            self._remove_record(thread_id, record)
            return None
        return record

    def _remove_record(self, thread_id: str, record: _Record) -> None:
        del self._records[thread_id]
        conv = self._conversations.get(record.conversation)
        if conv is not None:
            conv.threads.discard(thread_id)

    def _touch_record(self, thread_id: str, record: _Record, deadline: float) -> None:
        record.deadline = deadline
        self._records.move_to_end(thread_id)

    def _touch_conversation(self, conversation: str, deadline: float) -> _Conversation:
        """The conversation, created if new, with its deadline pushed to at least ``deadline``."""
        conv = self._conversations.get(conversation)
        if conv is None:
            conv = self._conversations[conversation] = _Conversation(deadline)
            return conv
        # never earlier: a client with a shorter TTL must not cut short its records' conversation
        if deadline > conv.deadline:
            conv.deadline = deadline
        self._conversations.move_to_end(conversation)
        return conv

    def _evict_front(self, now: float, limit: int | None) -> int:
        """Evict expired entries from the front of both orders; ``None`` means all of them."""
        evicted = 0
        records = self._records
        while records and (limit is None or evicted < limit):
            thread_id, record = next(iter(records.items()))
            if record.deadline >= now:
                break
            self._remove_record(thread_id, record)
            evicted += 1
        tombstones = self._tombstones
        while tombstones and next(iter(tombstones.values())) < now:
            tombstones.popitem(last=False)  # one TTL: the expired gather at the front
        conversations = self._conversations
        budget = limit
        while conversations and (budget is None or budget > 0):
            conversation, conv = next(iter(conversations.items()))
            if conv.deadline >= now:
                break
            evicted += self.retire_conversation(conversation)
            if budget is not None:
                budget -= 1
        return evicted


_LETTER_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def letter_id_key(letter_id: str) -> tuple[int, int]:
    """``(ms, seq)`` of a dead letter id, or ``(-1, -1)`` when it is not one."""
    if not isinstance(letter_id, str) or not _LETTER_ID.fullmatch(letter_id):
        return (-1, -1)
    ms, _, seq = letter_id.partition("-")
    key = (int(ms), int(seq))
    return key if max(key) < 2**64 else (-1, -1)  # Redis's ids are two 64-bit numbers


def since_ms(since: float | None) -> int:
    """The first millisecond of a ``since`` bound (seconds since the epoch); 0 for none.

    Rounded to the microsecond first, so that a letter's own ``time`` selects that letter.
    """
    return 0 if since is None else max(0, math.ceil(round(since * 1000, 3)))


def letter_matches(letter: DeadLetter, reason: str | None, listener: str | None) -> bool:
    """Whether ``letter`` passes the ``reason`` and ``listener`` filters (None: any)."""
    return (reason is None or letter.reason == reason) and (
        listener is None or letter.listener == listener
    )


def id_in_use(thread_id: str) -> ValueError:
    return ValueError(
        f"thread id {thread_id!r} is already in use; every call needs a fresh thread id"
    )


def check_settings(where: str, /, **values: Any) -> None:
    """Reject settings no backend can honour, by the ranges `BackendConfig` declares for them
    (one home for every default and range: xml_pipeline._settings).

    Raises:
        UsageError: (a ValueError) ``{where}: {setting} {problem}`` for the first refused.
    """
    build(BackendConfig, where, **values)
