"""The in-process backend: the protocol's rules (`StateCore`) called from the event loop."""

from __future__ import annotations

from collections.abc import Sequence

from xml_pipeline.backends.base import (
    DeadLetter,
    DeadLetterCounts,
    PruneResult,
    RunSnapshot,
    ThreadRecord,
)
from xml_pipeline.backends.rules import DEFAULTS, StateCore, check_settings

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Thread records and conversation history in this process's memory (the default).

    Use it when one pump process owns the organism (handlers in a process pool still reach the
    state through the pump). Nothing is shared with other processes and nothing outlives the
    process (an `Organism` keeps its memory backend from one run to the next, so its dead
    letters outlast a restart in the same process). Each method completes without yielding to
    the event loop, so each is atomic.

    Expired entries are evicted lazily (a few on every ``extend``); call `sweep` to evict all
    of them at once, for instance from a periodic task.

    Raises:
        ValueError: ``thread_ttl_seconds`` is not positive or ``history_max_entries`` < 1.
    """

    def __init__(
        self,
        *,
        thread_ttl_seconds: float = DEFAULTS.thread_ttl_seconds,
        history_max_entries: int = DEFAULTS.history_max_entries,
    ) -> None:
        check_settings(
            "MemoryBackend()",
            thread_ttl_seconds=thread_ttl_seconds,
            history_max_entries=history_max_entries,
        )
        self._ttl = float(thread_ttl_seconds)
        self._max_entries = history_max_entries
        self._state = StateCore()

    def __repr__(self) -> str:
        return (
            f"MemoryBackend(thread_ttl_seconds={self._ttl!r}, "
            f"history_max_entries={self._max_entries!r})"
        )

    async def open(self) -> None:
        """Nothing to connect to; present for the protocol."""

    async def aclose(self) -> None:
        """Nothing to release; the state stays usable until the object is dropped."""

    async def put_root(self, thread_id: str, name: str) -> None:
        """Create (or keep, if present) the root record; the root has no TTL."""
        self._state.put_root(thread_id, name)

    def __init_subclass__(cls, **kwargs: object) -> None:
        # a subclass that changes extend or prune (a test double, a wrapper) must be called
        # through them: the registry then awaits them instead of calling the twins below
        super().__init_subclass__(**kwargs)
        if "extend" in cls.__dict__ and "extend_now" not in cls.__dict__:
            cls.extend_now = None  # type: ignore[assignment]
        if "prune" in cls.__dict__ and "prune_now" not in cls.__dict__:
            cls.prune_now = None  # type: ignore[assignment]

    async def extend(
        self, parent_id: str, child_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        """Create ``child_id`` under ``parent_id`` (see `Backend.extend`).

        Raises:
            ValueError: ``child_id`` is already in use under another parent.
        """
        return self._state.extend(
            parent_id, child_id, listener, history_entry, self._ttl, self._max_entries
        )

    def extend_now(
        self, parent_id: str, child_id: str, listener: str, history_entry: bytes | None = None
    ) -> ThreadRecord | None:
        """`extend` without a coroutine (see `ImmediateBackend`)."""
        return self._state.extend(
            parent_id, child_id, listener, history_entry, self._ttl, self._max_entries
        )

    async def prune(self, thread_id: str, history_entry: bytes | None = None) -> PruneResult | None:
        """Retire ``thread_id`` and tell where its response goes (see `Backend.prune`)."""
        return self._state.prune(thread_id, history_entry, self._ttl, self._max_entries)

    def prune_now(self, thread_id: str, history_entry: bytes | None = None) -> PruneResult | None:
        """`prune` without a coroutine (see `ImmediateBackend`)."""
        return self._state.prune(thread_id, history_entry, self._ttl, self._max_entries)

    async def get(self, thread_id: str) -> ThreadRecord | None:
        """The record of ``thread_id`` (refreshing its TTL), or ``None``."""
        return self._state.get(thread_id, self._ttl)

    async def chain(self, thread_id: str) -> list[str] | None:
        """Listener names from the root down to ``thread_id``, or ``None`` when unknown."""
        return self._state.chain(thread_id)

    async def retire_conversation(self, conversation: str) -> int:
        """Remove every record and the history of a conversation; returns records removed."""
        return self._state.retire_conversation(conversation)

    async def abandon(self, conversation: str) -> int:
        """Retire a conversation whose opening call may still arrive (see `Backend.abandon`)."""
        return self._state.abandon(conversation)

    async def count(self) -> int:
        """Number of live thread records, the root included."""
        return self._state.count()

    async def history(self, conversation: str) -> list[bytes]:
        """The conversation's history, oldest first (empty when none)."""
        return self._state.history(conversation)

    async def sweep(self) -> int:
        """Evict every expired record and conversation now; returns the records evicted."""
        return self._state.sweep()

    async def add_dead_letters(
        self, letters: Sequence[DeadLetter], max_entries: int
    ) -> list[DeadLetter]:
        """Keep ``letters`` (see `Backend.add_dead_letters`)."""
        return self._state.add_dead_letters(list(letters), max_entries)

    async def dead_letters(
        self,
        *,
        reason: str | None = None,
        listener: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """The kept dead letters, oldest first, filtered (see `Backend.dead_letters`)."""
        return self._state.dead_letters(reason, listener, since, limit)

    async def get_dead_letter(self, letter_id: str) -> DeadLetter | None:
        """The dead letter with this id, or ``None``."""
        return self._state.get_dead_letter(letter_id)

    async def delete_dead_letters(self, letter_ids: Sequence[str]) -> int:
        """Remove the dead letters with these ids; returns how many were removed."""
        return self._state.delete_dead_letters(list(letter_ids))

    async def dead_letter_counts(self) -> DeadLetterCounts:
        """How many dead letters are kept, and how many were dropped beyond the bound."""
        return self._state.dead_letter_counts()

    async def put_runs(
        self, process: str, snapshot: bytes, forget_after_seconds: float
    ) -> list[bytes]:
        """Keep the runs of ``process``; take its commands (see `Backend.put_runs`)."""
        return self._state.put_runs(process, snapshot, forget_after_seconds)

    async def run_snapshots(self) -> list[RunSnapshot]:
        """Every process's runs not forgotten yet (see `Backend.run_snapshots`)."""
        return self._state.run_snapshots()

    async def push_run_command(self, process: str, command: bytes) -> bool:
        """Queue ``command`` for ``process`` (see `Backend.push_run_command`)."""
        return self._state.push_run_command(process, command)

    async def delete_runs(self, process: str) -> None:
        """Remove the runs of ``process`` and its commands."""
        self._state.delete_runs(process)
